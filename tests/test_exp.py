"""The CPU KL kernel's inline float exp (csrc/cpu/exp.h), compiled alone by tests/exp_check.cpp: within 1.5 units in
the last place of exp in double over the float range it is used on, subnormal results included, and exact on the
special values. Built twice, without and with fused multiply-adds (the kernel's baseline clone has none, its AVX2 and
AVX-512 clones use them)."""
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent

FLAGS = {
    "no fused multiply-add": ["-ffp-contract=off"],
    "fused multiply-add": ["-mfma", "-ffp-contract=fast"],
}


def _has_fma():
    try:
        return "fma" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@pytest.mark.parametrize("variant", list(FLAGS))
def test_exp_float_within_one_and_a_half_ulp(variant, tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler on this machine to build the check")
    if variant == "fused multiply-add" and not (platform.machine() == "x86_64" and _has_fma()):
        pytest.skip("this processor has no x86 fused multiply-add to run the check with")
    binary = tmp_path / "exp_check"
    subprocess.run([compiler, "-std=c++17", "-O2", *FLAGS[variant], str(HERE / "exp_check.cpp"), "-o", str(binary)],
                   check=True)
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True)
    results = dict(line.split() for line in out.stdout.splitlines())
    assert int(results["checked"]) > 30_000_000
    assert int(results["special_bad"]) == 0, out.stderr
    assert float(results["max_ulp"]) <= 1.5
