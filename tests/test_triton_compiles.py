"""Every launch of the Triton ops compiles for the GPU (sm_90, down to a cubin), also on machines without one: Triton's
interpreter, which runs the kernels in the other tests here, accepts code that its compiler refuses (it let a kernel
read a plain Python global, which the compiler rejects). The launches are recorded from the ops themselves
(tests/triton_compile_check.py), so new kernels and new paths are covered as the ops take them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_every_triton_launch_compiles_for_sm90(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "triton"))
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("triton_compile_check.py")), "90"],
                         capture_output=True, text=True, env=env, timeout=600)
    if run.returncode == 3:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    # KL forward (one program per row, chunked), merge, backward per mask; AT's three kernels; four dtypes
    assert last.startswith("compiled ") and int(last.split()[1]) >= 40, last
