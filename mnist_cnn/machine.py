"""What this machine is: the one reader of /proc/cpuinfo, for precision choices and benchmark reports.

MNIST_CNN_CPUINFO names another file to read instead: what another machine's CPU would make the code
choose (`pytest --auto-precision mixed_bfloat16` runs the suite as on a CPU with AVX512-BF16).
"""
import os
import platform
import re

CPUINFO = "/proc/cpuinfo"
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 and AMX, Arm BF16
REPORTED_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16",
                  "bf16"}


def read_cpuinfo(path=None):
    """/proc/cpuinfo's text (or MNIST_CNN_CPUINFO's), or "" where there is none (not Linux)."""
    path = path or os.environ.get("MNIST_CNN_CPUINFO") or CPUINFO
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_flags(path=None):
    """The CPU's feature flags (x86 `flags`, Arm `Features`), as a set."""
    flags = set()
    for line in re.findall(r"^(?:flags|Features)\s*:(.*)$", read_cpuinfo(path), re.MULTILINE):
        flags.update(line.split())
    return flags


def cpu_has_bf16(path=None):
    """True where the CPU computes bfloat16 natively; False where it can't be told (no /proc/cpuinfo)."""
    return bool(cpu_flags(path) & BF16_FLAGS)


def describe(path=None):
    """The CPU model, the vector extensions that matter for speed, cores, memory and Python: what a figure holds for."""
    model = re.search(r"^model name\s*:\s*(.*)$", read_cpuinfo(path), re.MULTILINE)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "cpu_flags": sorted(cpu_flags(path) & REPORTED_FLAGS),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
    }
