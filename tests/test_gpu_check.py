"""benchmarks/gpu_check.sh rehearsed without a GPU: options, stage limits, the overall budget, the output files, and
(--dry-run) the build with ZSKT_CUDA=1, so that the first real GPU run does not fail on a typo."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run(*args, env=None, timeout=600):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def stage_lines(text: str) -> dict[str, str]:
    names = ("build", "extension", "gpu-tests", "memcheck", "bench-ops", "bench-train", "bench-mte", "bench-synthesis",
             "torchrun", "bench-compiled", "gpu-compiled")
    return {line.split()[0]: line for line in text.splitlines() if line.split()[:1] and line.split()[0] in names}


def test_bad_options_and_help():
    bad = run("--fast")
    assert bad.returncode == 2 and "unknown option --fast" in bad.stderr
    assert run("--budget", "soon").returncode == 2
    helped = run("--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "--quick" in helped.stdout


def test_a_stage_past_its_limit_is_reported_and_fails_the_run(tmp_path):
    """A build that hangs (a stand-in python that sleeps) is cut at its limit; the stages after it do not run."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-m" ]; then sleep 60; fi\nexit 0\n')
    fake.chmod(0o755)
    result = run("--dry-run", env={"OUT": str(tmp_path / "out"), "PYTHON": str(fake), "GPU_CHECK_LIMIT_BUILD": "2"})
    lines = stage_lines(result.stdout)
    assert result.returncode == 1
    assert "TIMED OUT after 2 s" in lines["build"]
    assert "extension" not in lines
    assert (tmp_path / "out" / "summary.txt").read_text().strip().endswith("budget")


def test_a_budget_too_small_skips_the_stages(tmp_path):
    result = run("--dry-run", "--budget", "10", env={"OUT": str(tmp_path)})
    assert result.returncode == 1
    assert "skipped: out of time (budget 10 s)" in stage_lines(result.stdout)["build"]


@pytest.mark.slow
def test_dry_run_builds_with_cuda_and_skips_the_gpu_stages(tmp_path):
    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    if not nvcc.exists() and not shutil.which("nvcc"):
        pytest.skip("no CUDA toolkit here: the dry run's build with ZSKT_CUDA=1 needs nvcc")
    out = tmp_path / "out"
    result = run("--dry-run", env={"OUT": str(out), "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr + (out / "gpu_check.log").read_text()[-3000:]
    lines = stage_lines(result.stdout)
    assert " ok " in lines["build"] and " ok " in lines["extension"]
    for name in ("gpu-tests", "memcheck", "bench-ops", "bench-train", "bench-mte", "bench-synthesis", "torchrun",
                 "bench-compiled", "gpu-compiled"):
        assert "skipped: no GPU" in lines[name], name
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.log", "summary.txt"] and len(files) <= 8
    assert (out / "summary.txt").read_text() == result.stdout
    quick = run("--dry-run", "--quick", env={"OUT": str(out), "PYTHON": sys.executable})
    assert quick.returncode == 0 and "memcheck" not in stage_lines(quick.stdout)
    assert "bench-train" not in stage_lines(quick.stdout)
