"""The compiled library and the choice of loss backend.

Backends:
  eager   the spec's formulas in plain PyTorch (`zskt_fast.ops.reference`), any device; also the test reference
  cpu     the C++ kernels of `zskt_fast._C`, CPU tensors
  cuda    the CUDA kernels of `zskt_fast._C`, CUDA tensors, when the extension was built with CUDA
  triton  the Triton kernels, CUDA tensors (CPU tensors too under TRITON_INTERPRET=1)
  auto    the fastest one available for the tensors' device
"""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "eager", "cpu", "cuda", "triton")

try:
    from zskt_fast import _C
except ImportError as error:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR: Exception | None = error
else:
    _LOAD_ERROR = None


def compiled_available() -> bool:
    """True when `zskt_fast._C` loaded and its ops are registered under `torch.ops.zskt_fast`."""
    return _C is not None


def compiled_with_cuda() -> bool:
    return _C is not None and bool(_C.with_cuda)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


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
        if not triton_available():
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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels accumulate, and return losses, in float32; float64 inputs stay in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def register_fused_op(forward_name: str, backward_name: str, *, fake_forward, fake_backward, setup_context,
                      make_backward) -> None:
    """Fake kernels for a forward/backward op pair, and the forward's autograd formula built on the backward op."""
    torch.library.register_fake(forward_name, fake_forward)
    torch.library.register_fake(backward_name, fake_backward)
    backward_op = getattr(torch.ops.zskt_fast, backward_name.split("::")[1])
    torch.library.register_autograd(forward_name, make_backward(backward_op), setup_context=setup_context)
