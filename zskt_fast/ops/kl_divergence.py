"""KL divergence from the teacher's to the student's softened class distribution.

The public function and its checks; for the fused backends, the fake kernels of
`torch.ops.zskt_fast.kl_divergence_{forward,backward}` (kernels: csrc/cpu/kl_divergence.cpp, csrc/cuda/kl_divergence.cu;
autograd: csrc/autograd.cpp) and the fake kernels and autograd formula of their `_triton` twins
(zskt_fast/kernels/triton/kl_divergence.py).
"""
from __future__ import annotations

import torch

from ..common import accumulation_dtype
from . import _checks, _library, reference
from ._checks import DEFAULT_TEMPERATURE


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                  temperature: float = DEFAULT_TEMPERATURE, reduction: str = "mean",
                  backend: str = "auto") -> torch.Tensor:
    """KL(softmax(teacher_logits / T) || softmax(student_logits / T)), without a T^2 factor.

    reduction: "mean" divides the summed KL by B*C (F.kl_div's default, what the authors used, so beta = 250 keeps its
    meaning), "batchmean" by B (the true KL), "sum" adds the rows, "none" returns the [B] per-row KL.
    Gradients flow to both logit sets. The result is float32 (float64 for float64 inputs).
    """
    _checks.check_logits(student_logits, teacher_logits)
    _checks.check_kl_options(temperature, reduction)
    backend = _library.resolve_backend(backend, student_logits.device)
    return checked_kl_divergence(student_logits, teacher_logits, temperature, reduction, backend)


def checked_kl_divergence(student_logits, teacher_logits, temperature: float, reduction: str,
                          backend: str) -> torch.Tensor:
    """`kl_divergence` for arguments already checked and a backend already resolved."""
    if backend == "eager":
        return reference.kl_divergence(student_logits, teacher_logits, temperature, reduction)
    student_logits, teacher_logits = _checks.common_dtype(student_logits, teacher_logits)
    if backend == "triton":
        _load_triton_ops()
        forward = torch.ops.zskt_fast.kl_divergence_forward_triton
    else:
        forward = torch.ops.zskt_fast.kl_divergence_forward
    rows = forward(student_logits, teacher_logits, float(temperature))[0]
    return reference.reduce_kl_rows(rows, reduction, student_logits.shape[1])


def _fake_forward(student_logits, teacher_logits, temperature):
    rows = student_logits.new_empty((student_logits.shape[0],), dtype=accumulation_dtype(student_logits.dtype))
    # per row (csrc/kl_state.h): student (m_s, log sum_s), teacher (m_t, log sum_t, y_ref, R)
    return rows, rows.new_empty((student_logits.shape[0], 2)), rows.new_empty((student_logits.shape[0], 4))


def _fake_backward(grad_rows, student_logits, teacher_logits, student_stats, teacher_stats, temperature, output_mask):
    shape = student_logits.shape
    return (student_logits.new_empty(shape if output_mask[0] else (0,)),
            teacher_logits.new_empty(shape if output_mask[1] else (0,)))


def _setup_context(ctx, inputs, output):
    student_logits, teacher_logits, temperature = inputs
    _rows, student_stats, teacher_stats = output
    ctx.save_for_backward(student_logits, teacher_logits, student_stats, teacher_stats)
    ctx.temperature = temperature
    ctx.mark_non_differentiable(student_stats, teacher_stats)


def _make_backward(backward_op):
    def backward(ctx, grad_rows, _grad_student_stats, _grad_teacher_stats):
        student_logits, teacher_logits, student_stats, teacher_stats = ctx.saved_tensors
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        grad_student, grad_teacher = backward_op(grad_rows, student_logits, teacher_logits, student_stats,
                                                 teacher_stats, ctx.temperature, wanted)
        return grad_student if wanted[0] else None, grad_teacher if wanted[1] else None, None

    return backward


_load_triton_ops = _library.register_fake_and_autograd(
    "kl_divergence", "zskt_fast.kernels.triton.kl_divergence", fake_forward=_fake_forward,
    fake_backward=_fake_backward, setup_context=_setup_context, make_backward=_make_backward)
