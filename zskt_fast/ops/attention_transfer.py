"""Attention transfer (Zagoruyko & Komodakis, 2017) between matched student and teacher feature maps.

The public function and its checks; for the fused backends, the fake kernels of
`torch.ops.zskt_fast.attention_transfer_{forward,backward}` (kernels: csrc/cpu/attention_transfer.cpp,
csrc/cuda/attention_transfer.cu; autograd: csrc/autograd.cpp) and the fake kernels and autograd formula of their
`_triton` twins (zskt_fast/kernels/triton/attention_transfer.py).
"""
from __future__ import annotations

import torch

from ..common import accumulation_dtype, check_non_negative
from . import _checks, _library, reference
from ._checks import DEFAULT_BETA


def attention_transfer(student_features, teacher_features, *, beta: float = DEFAULT_BETA,
                       backend: str = "auto") -> torch.Tensor:
    """beta * sum over layers l of mean_{b, hw} (q_s - q_t)^2, q the normalised attention map of a layer.

    student_features, teacher_features: equally long sequences of [B, C, H, W] tensors, matched by position; the
    student and teacher maps of a layer must agree in B, H and W and may differ in C. Gradients flow to every feature
    map that requires them. The result is a float32 scalar (float64 for float64 inputs).
    """
    _checks.check_feature_pairs(student_features, teacher_features)
    check_non_negative(beta, "beta")
    backend = _library.resolve_backend(backend, student_features[0].device)
    return checked_attention_transfer(student_features, teacher_features, beta, backend)


def checked_attention_transfer(student_features, teacher_features, beta: float, backend: str) -> torch.Tensor:
    """`attention_transfer` for arguments already checked and a backend already resolved."""
    if backend == "eager":
        return reference.attention_transfer(student_features, teacher_features, beta)
    if backend == "triton":
        _load_triton_ops()
        forward = torch.ops.zskt_fast.attention_transfer_forward_triton
    else:
        forward = torch.ops.zskt_fast.attention_transfer_forward
    total = None
    for s, t in zip(student_features, teacher_features):
        s, t = _checks.common_dtype(s, t)
        batch, _, height, width = s.shape
        layer = forward(s, t)[0].sum() / (batch * height * width)
        total = layer if total is None else total + layer
    return beta * total


def _fake_forward(student_features, teacher_features):
    batch, _, height, width = student_features.shape
    acc = accumulation_dtype(student_features.dtype)
    per_sample = student_features.new_empty((batch,), dtype=acc)
    maps = student_features.new_empty((batch, height * width), dtype=acc)
    return per_sample, maps, torch.empty_like(maps), torch.empty_like(per_sample), torch.empty_like(per_sample)


def _fake_backward(grad_sq_diff, features, attention, other_attention, norm):
    return torch.empty_like(features)


def _setup_context(ctx, inputs, output):
    student_features, teacher_features = inputs
    _, q_student, q_teacher, norm_student, norm_teacher = output
    ctx.save_for_backward(student_features, teacher_features, q_student, q_teacher, norm_student, norm_teacher)
    ctx.mark_non_differentiable(q_student, q_teacher, norm_student, norm_teacher)


def _make_backward(backward_op):
    def backward(ctx, grad_sq_diff, *_unused):
        student_features, teacher_features, q_student, q_teacher, norm_student, norm_teacher = ctx.saved_tensors
        grad_student = grad_teacher = None
        if ctx.needs_input_grad[0]:
            grad_student = backward_op(grad_sq_diff, student_features, q_student, q_teacher, norm_student)
        if ctx.needs_input_grad[1]:
            grad_teacher = backward_op(grad_sq_diff, teacher_features, q_teacher, q_student, norm_teacher)
        return grad_student, grad_teacher

    return backward


_load_triton_ops = _library.register_fake_and_autograd(
    "attention_transfer", "zskt_fast.kernels.triton.attention_transfer", fake_forward=_fake_forward,
    fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)
