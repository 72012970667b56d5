"""The package as a user meets it: a light import, the compiled library loaded, the backends it reports."""
import subprocess
import sys

import torch

import zskt_fast
from zskt_fast.ops import _library


def test_import_is_light():
    """Importing the package loads the compiled ops but neither imports Triton nor compiles anything."""
    code = "import sys, zskt_fast; print('triton' in sys.modules, 'torch._inductor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_compiled_library_is_loaded():
    assert _library.compiled_available(), f"zskt_fast._C did not load: {_library._LOAD_ERROR}"
    for name in ("kl_divergence_forward", "kl_divergence_backward", "attention_transfer_forward",
                 "attention_transfer_backward"):
        assert hasattr(torch.ops.zskt_fast, name)


def test_compiled_ops_differentiate_without_python():
    """The compiled forward ops' autograd is C++ (csrc/autograd.cpp): their graph nodes are C++ nodes, not Python
    autograd functions, so no Python runs per call (a Python formula cost more than the KL kernel at 10 classes)."""
    s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
    rows = torch.ops.zskt_fast.kl_divergence_forward(s, t, 1.0)[0]
    features = [torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4)]
    sq_diff = torch.ops.zskt_fast.attention_transfer_forward(*features)[0]
    for out, function in ((rows, "KlDivergence"), (sq_diff, "AttentionTransfer")):
        assert function in out.grad_fn.name() and "CppNode" in out.grad_fn.name(), out.grad_fn.name()
    grad_s, = torch.autograd.grad(rows.sum(), s)
    grad_f, = torch.autograd.grad(sq_diff.sum(), features[0])
    assert grad_s.shape == s.shape and grad_f.shape == features[0].shape


def test_compile_caches_are_keyed_by_the_build():
    """torch.compile's caches name ops, not their versions: the compiled trainer mixes a hash of the compiled library
    and the ops' Python files into their keys, so that a cache written by another build is not reused."""
    import torch._inductor.config as inductor_config

    zskt_fast.key_compile_caches_by_build()
    build = inductor_config.unsafe_marked_cacheable_functions["torch.ops.zskt_fast"]
    assert build == _library._build_id() and len(build) == 16
    int(build, 16)


def test_backends_reported_for_each_device():
    assert zskt_fast.available_backends("cpu")[0] == "cpu"
    assert zskt_fast.available_backends("cpu")[-1] == "eager"
    cuda_backends = zskt_fast.available_backends("cuda")
    assert ("cuda" in cuda_backends) == _library.compiled_with_cuda()
    assert _library.resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_public_api():
    for name in ("kl_divergence", "attention_transfer", "zskt_student_loss", "zskt_generator_loss"):
        assert callable(getattr(zskt_fast, name))
    for name in ("KLDivergence", "AttentionTransfer", "ZSKTStudentLoss", "ZSKTGeneratorLoss"):
        assert issubclass(getattr(zskt_fast.nn, name), torch.nn.Module)


def test_cuda_kernels_built_where_nvcc_exists():
    """Where a CUDA toolkit is found the build compiles the .cu sources, so compile errors in them fail here too."""
    import os
    import shutil
    from pathlib import Path

    import pytest

    nvcc = (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc").exists() or shutil.which("nvcc")
    if os.environ.get("ZSKT_CUDA", "auto").lower() in ("0", "off", "false"):
        pytest.skip("ZSKT_CUDA=0: built without the CUDA kernels on purpose")
    if not nvcc or torch.version.cuda is None:
        pytest.skip("no CUDA toolkit here, or torch is a CPU build: nothing to compile the .cu files with")
    assert _library.compiled_with_cuda(), "nvcc is present but zskt_fast._C was built without its CUDA kernels"


def test_the_wheel_lists_every_package():
    """pyproject.toml names the packages the wheel holds: every folder of zskt_fast with an __init__.py, no other."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "zskt_fast").rglob("__init__.py")}
    assert listed == found
