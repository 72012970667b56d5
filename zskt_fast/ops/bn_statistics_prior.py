"""The batch-norm statistics prior (DeepInversion, Yin et al. 2020; DFQ, Choi et al. 2020): how far the batch
statistics of the inputs of a network's BatchNorm layers are from the layers' running statistics.

The public functions and their checks; for the fused backends, the fake kernels of
`torch.ops.zskt_fast.bn_statistics_{forward,backward}` (kernel: csrc/cpu/bn_statistics.cpp; autograd:
csrc/autograd.cpp) and the fake kernels and autograd formula of their `_triton` twins
(zskt_fast/kernels/triton/bn_statistics.py). The kernels compute each layer's per-channel mean and biased variance
(and the gradient with respect to the layer's input) in one pass each way; the norms of the few per-channel
differences are plain PyTorch.
"""
from __future__ import annotations

import torch

from ..common import accumulation_dtype
from . import _checks, _library, reference


def bn_statistics_prior(inputs, running_means, running_vars, *, backend: str = "auto") -> torch.Tensor:
    """sum over layers l of ||running_var_l - var_l||_2 + ||running_mean_l - mean_l||_2, where mean_l and var_l are
    the per-channel mean and biased variance over (N, H, W) of the l-th [B, C_l, H_l, W_l] input (norms, not
    squared). Gradients flow to every input that requires them; the running statistics are constants.

    inputs: a sequence of [B, C, H, W] tensors (float32, bfloat16, float16 or float64; any memory layout);
    running_means, running_vars: sequences of [C] tensors, one of each per input. Statistics accumulate in float32
    (float64 for float64 inputs); the result is a float32 scalar (float64 when an input is float64).
    backend: 'cpu' (C++), 'triton', 'eager' or 'auto'; on CUDA tensors 'cuda' runs the Triton kernel (this op has no
    CUDA C++ kernel of its own)."""
    _checks.check_bn_prior_arguments(inputs, running_means, running_vars)
    backend = resolve_bn_backend(backend, inputs[0].device)
    return reference.prior_of_statistics([checked_bn_statistics(x, backend) for x in inputs], running_means,
                                         running_vars)


def bn_statistics(features: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [C], biased variance [C]) over (N, H, W) of a [B, C, H, W] map, fused, differentiable."""
    _checks.check_bn_prior_arguments([features], None, None)
    return checked_bn_statistics(features, resolve_bn_backend(backend, features.device))


def resolve_bn_backend(backend: str, device: torch.device) -> str:
    """The backend that computes the statistics: Triton stands in for 'cuda', which has no kernel of its own here."""
    if backend == "cuda" and device.type == "cuda":
        backend = "triton"
    resolved = _library.resolve_backend(backend, device)
    if resolved == "cuda":  # 'auto' on a GPU with the CUDA extension: the Triton kernel, else eager
        resolved = "triton" if _library._why_unavailable("triton", device) is None else "eager"
    return resolved


def checked_bn_statistics(features: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`bn_statistics` for an argument already checked and a backend already resolved."""
    if backend == "eager":
        return reference.bn_statistics(features)
    if backend == "triton":
        _load_triton_ops()
        return torch.ops.zskt_fast.bn_statistics_forward_triton(features)
    return torch.ops.zskt_fast.bn_statistics_forward(features)


def _fake_forward(features):
    channels = features.shape[1]
    acc = accumulation_dtype(features.dtype)
    return features.new_empty((channels,), dtype=acc), features.new_empty((channels,), dtype=acc)


def _fake_backward(grad_mean, grad_var, features, mean):
    return torch.empty_like(features)


def _setup_context(ctx, inputs, output):
    (features,) = inputs
    mean, _ = output
    ctx.save_for_backward(features, mean)


def _make_backward(backward_op):
    def backward(ctx, grad_mean, grad_var):
        features, mean = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        return backward_op(grad_mean, grad_var, features, mean)

    return backward


_load_triton_ops = _library.register_fake_and_autograd(
    "bn_statistics", "zskt_fast.kernels.triton.bn_statistics", fake_forward=_fake_forward,
    fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)
