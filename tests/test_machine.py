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


def test_mnist_cnn_cpuinfo_stands_in_for_the_cpu(tmp_path, monkeypatch):
    """What `pytest --auto-precision` uses: every process of the run reads the stand-in, not /proc/cpuinfo."""
    (tmp_path / "bf16").write_text("model name\t: Stand-in\nflags\t\t: fpu avx2 avx512_bf16\n")
    (tmp_path / "plain").write_text("model name\t: Stand-in\nflags\t\t: fpu avx2\n")
    monkeypatch.setenv("MNIST_CNN_CPUINFO", str(tmp_path / "bf16"))
    assert machine.cpu_has_bf16() is True and machine.describe()["cpu"] == "Stand-in"
    monkeypatch.setenv("MNIST_CNN_CPUINFO", str(tmp_path / "plain"))
    assert machine.cpu_has_bf16() is False
    assert machine.cpu_has_bf16(tmp_path / "bf16") is True  # a path given still wins


@pytest.mark.stage
@pytest.mark.parametrize("choice", ["float32", "mixed_bfloat16"])
def test_the_suite_option_makes_auto_pick_either_precision_in_a_stage_process(tmp_path, choice):
    import subprocess
    import sys

    from conftest import REPO
    (tmp_path / "test_probe.py").write_text(
        "import subprocess, sys\n\n\ndef test_probe():\n"
        "    out = subprocess.run([sys.executable, '-c', 'from mnist_cnn.machine import cpu_has_bf16; "
        "print(cpu_has_bf16())'], capture_output=True, text=True, check=True).stdout\n"
        f"    assert out.strip() == {str(choice == 'mixed_bfloat16')!r}\n")
    # the suite's conftest loaded as a plugin: the probe lies outside tests/
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "conftest",
                             "--rootdir", REPO, "-c", f"{REPO}/pytest.ini", "--auto-precision", choice,
                             str(tmp_path / "test_probe.py")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "1 passed" in result.stdout, result.stdout + result.stderr
