"""Attention transfer (Zagoruyko & Komodakis, 2017) between matched student and teacher feature maps.

Public function, its argument checks, and for the compiled backends the fake kernels and autograd formula of
`torch.ops.zskt_fast.attention_transfer_forward` (kernels: csrc/cpu/attention_transfer.cpp,
csrc/cuda/attention_transfer.cu).
"""
from __future__ import annotations

import torch

from . import _checks, _library, reference


def attention_transfer(student_features, teacher_features, *, beta: float = 250.0,
                       backend: str = "auto") -> torch.Tensor:
    """beta * sum over layers l of mean_{b, hw} (q_s - q_t)^2, q the normalised attention map of a layer.

    student_features, teacher_features: equally long sequences of [B, C, H, W] tensors, matched by position; the
    student and teacher maps of a layer must agree in B, H and W and may differ in C. Gradients flow to every feature
    map that requires them. The result is a float32 scalar (float64 for float64 inputs).
    """
    _checks.check_feature_pairs(student_features, teacher_features)
    _checks.check_non_negative(beta, "beta")
    backend = _library.resolve_backend(backend, student_features[0].device)
    if backend == "eager":
        return reference.attention_transfer(student_features, teacher_features, beta)
    total = attention_transfer_layer(student_features[0], teacher_features[0], backend)
    for s, t in zip(student_features[1:], teacher_features[1:]):
        total = total + attention_transfer_layer(s, t, backend)
    return beta * total


def attention_transfer_layer(student_features, teacher_features, backend: str) -> torch.Tensor:
    """The AT term of one layer through a fused backend; arguments already checked."""
    student_features, teacher_features = _checks.common_dtype(student_features, teacher_features)
    forward = (torch.ops.zskt_fast.attention_transfer_forward_triton if backend == "triton"
               else torch.ops.zskt_fast.attention_transfer_forward)
    sq_diff = forward(student_features, teacher_features)[0]
    batch, _, height, width = student_features.shape
    return sq_diff.sum() / (batch * height * width)


# The Triton implementation is an op of its own (the C++ ops dispatch on the device alone); its kernels module, and
# with it Triton, is imported on first use.
@torch.library.custom_op("zskt_fast::attention_transfer_forward_triton", mutates_args=())
def _forward_triton(student_features: torch.Tensor, teacher_features: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from zskt_fast.kernels.triton import attention_transfer as kernels

    return kernels.forward(student_features, teacher_features)


@torch.library.custom_op("zskt_fast::attention_transfer_backward_triton", mutates_args=())
def _backward_triton(grad_sq_diff: torch.Tensor, features: torch.Tensor, attention: torch.Tensor,
                     other_attention: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    from zskt_fast.kernels.triton import attention_transfer as kernels

    return kernels.backward(grad_sq_diff, features, attention, other_attention, norm)


def _fake_forward(student_features, teacher_features):
    batch, _, height, width = student_features.shape
    acc = _library.accumulation_dtype(student_features.dtype)
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


def _register(forward_name: str, backward_name: str) -> None:
    _library.register_fused_op(forward_name, backward_name, fake_forward=_fake_forward, fake_backward=_fake_backward,
                               setup_context=_setup_context, make_backward=_make_backward)


_register("zskt_fast::attention_transfer_forward_triton", "zskt_fast::attention_transfer_backward_triton")
if _library.compiled_available():
    _register("zskt_fast::attention_transfer_forward", "zskt_fast::attention_transfer_backward")
