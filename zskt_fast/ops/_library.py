"""The compiled library, the Triton ops, and the choice of loss backend.

Backends:
  eager   the formulas in plain PyTorch (`zskt_fast.ops.reference`), any device; also the test reference
  cpu     the C++ kernels of `zskt_fast._C`, CPU tensors
  cuda    the CUDA kernels of `zskt_fast._C`, CUDA tensors, when the extension was built with CUDA
  triton  the Triton kernels, CUDA tensors (CPU tensors too under TRITON_INTERPRET=1)
  auto    the fastest one available for the tensors' device
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch

BACKENDS = ("auto", "eager", "cpu", "cuda", "triton")

try:
    from zskt_fast import _C
except ImportError as error:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR: Exception | None = error
else:
    _LOAD_ERROR = None

# Decided once, at import, without importing Triton: torch.compile cannot trace a module search (torch 2.11).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def compiled_available() -> bool:
    """True when `zskt_fast._C` loaded and its ops are registered under `torch.ops.zskt_fast`."""
    return _C is not None


def compiled_with_cuda() -> bool:
    return _C is not None and bool(_C.with_cuda)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _why_unavailable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, else the reason it cannot."""
    if backend == "eager":
        return None
    if backend in ("cpu", "cuda"):
        if _C is None:
            return (f"the compiled extension zskt_fast._C could not be loaded ({_LOAD_ERROR}); "
                    "build it with `pip install --no-build-isolation -e .`")
        if device.type != backend:
            return f"it runs on {backend} tensors and the inputs are on {device}"
        if backend == "cuda" and not compiled_with_cuda():
            return "zskt_fast._C was built without CUDA kernels (no nvcc at build time, or ZSKT_CUDA=0)"
        return None
    if backend == "triton":
        if not TRITON_INSTALLED:
            return "triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return (f"Triton kernels run on CUDA tensors (or on the CPU under TRITON_INTERPRET=1); the inputs are on "
                f"{device}")
    return f"unknown backend {backend!r}"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on tensors of `device`, fastest first, 'eager' last."""
    device = torch.device(device)
    order = ("cuda", "triton", "cpu") if device.type == "cuda" else ("cpu", "triton")
    return [b for b in order + ("eager",) if _why_unavailable(b, device) is None]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turns a backend name into the one that will run, or raises ValueError saying why it cannot."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            return "cpu" if _why_unavailable("cpu", device) is None else "eager"
        for candidate in ("cuda", "triton"):
            if _why_unavailable(candidate, device) is None:
                return candidate
        return "eager"
    reason = _why_unavailable(backend, device)
    if reason is not None:
        raise ValueError(f"backend {backend!r} is not available: {reason}")
    return backend


def key_compile_caches_by_build() -> None:
    """Keys torch.compile's on-disk caches (FX graphs, AOTAutograd) by this build of the ops, for graphs compiled
    from now on in this process.

    Those caches key a graph by its code, which names an op but not its version: a cache written by another build of
    zskt_fast would call that build's backward ops (say, with another schema). Inductor mixes the entries of
    `unsafe_marked_cacheable_functions` into its keys; the value set here is a hash of the compiled library and the
    Python files that register and differentiate the ops."""
    from torch._inductor import config

    config.unsafe_marked_cacheable_functions["torch.ops.zskt_fast"] = _build_id()


@functools.cache
def _build_id() -> str:
    package = Path(__file__).resolve().parent.parent
    files = sorted(package.glob("_C*.so")) + sorted(package.glob("ops/*.py")) + sorted(
        package.glob("kernels/triton/*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def register_fake_and_autograd(op: str, triton_kernels: str, *, fake_forward, fake_backward, setup_context,
                               make_backward) -> Callable[[], bool]:
    """For the forward/backward op pairs of `op` (zskt_fast::OP_forward / OP_backward from the compiled library, and
    their _triton twins defined in the module `triton_kernels`): the fake kernels (shapes and dtypes of the outputs,
    for torch.compile and opcheck) of both pairs, and the autograd formula of the Triton forward, which calls the
    Triton backward. The compiled forward's autograd is C++ (csrc/autograd.cpp): no Python runs on its calls.

    The compiled pair is registered now; returns the loader of the Triton pair, to be called before its first use."""
    def register(suffix: str) -> None:
        forward, backward = f"zskt_fast::{op}_forward{suffix}", f"zskt_fast::{op}_backward{suffix}"
        torch.library.register_fake(forward, fake_forward)
        torch.library.register_fake(backward, fake_backward)
        if suffix:
            backward_op = getattr(torch.ops.zskt_fast, f"{op}_backward{suffix}")
            torch.library.register_autograd(forward, make_backward(backward_op), setup_context=setup_context)

    if compiled_available():
        register("")
    return _triton_op_loader(triton_kernels, lambda: register("_triton"))


def _triton_op_loader(kernels_module: str, register: Callable[[], None]) -> Callable[[], bool]:
    """A function that imports `kernels_module` (which defines Triton ops, and imports Triton) on its first call and
    then runs `register`. Importing the package stays light; torch.compile runs the loader while tracing (its result
    is a constant) instead of tracing an import."""
    loaded = False

    def load() -> bool:
        nonlocal loaded
        if not loaded:
            module = importlib.import_module(kernels_module)
            if triton_interpreted():
                # The interpreter's kernels run on real CPU tensors only: keep torch.compile from tracing into them
                # (on a GPU it does, so that inductor sees the kernels).
                for op in module.TRITON_OPS:
                    op.register_torch_dispatch(_functional_mode(), _dispatch_without_decomposing)
            register()
            loaded = True
        return True

    # What torch.compiler.assume_constant_result marks, set here without it: that function imports Dynamo (and with
    # it inductor and Triton), which `import zskt_fast` must not.
    load._dynamo_marked_constant = True
    return load


def _functional_mode():
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    return FunctionalTensorMode


def _dispatch_without_decomposing(mode, op, types, args, kwargs):
    return mode.__torch_dispatch__(op, types, args, kwargs)
