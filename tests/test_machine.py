"""What the machine is (mnist_cnn/machine.py): the one reader of /proc/cpuinfo."""
import pytest

from mnist_cnn import machine


@pytest.mark.parametrize("cpuinfo, native", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # AMD Zen 4, Cooper Lake
    ("flags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),  # Sapphire Rapids
    ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm: Graviton 3, Neoverse V1
    ("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n", False),  # Skylake-X: no bfloat16
    ("Features\t: fp asimd\n", False),
])
def test_bfloat16_is_native_only_where_the_cpu_says_so(tmp_path, cpuinfo, native):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert machine.cpu_has_bf16(tmp_path / "cpuinfo") is native


def test_no_cpuinfo_means_no_bfloat16(tmp_path):
    assert machine.cpu_has_bf16(tmp_path / "no such file") is False  # not Linux: float32


def test_describe_names_the_cpu_and_the_flags_that_matter(tmp_path):
    (tmp_path / "cpuinfo").write_text("model name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n"
                                      "model name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n")
    described = machine.describe(tmp_path / "cpuinfo")
    assert described["cpu"] == "AMD EPYC 9R14"
    assert described["cpu_flags"] == ["avx2", "avx512_bf16", "avx512f", "fma"]
    assert described["cores"] >= 1 and described["memory_gib"] >= 0
