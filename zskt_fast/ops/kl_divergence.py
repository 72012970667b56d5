"""KL divergence from the teacher's to the student's softened class distribution.

Public function, its argument checks, and for the compiled backends the fake kernel and autograd formula of
`torch.ops.zskt_fast.kl_divergence_forward` (kernels: csrc/cpu/kl_divergence.cpp, csrc/cuda/kl_divergence.cu).
"""
from __future__ import annotations

import torch

from . import _checks, _library, reference

REDUCTIONS = ("mean", "batchmean", "sum", "none")


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                  reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """KL(softmax(teacher_logits / T) || softmax(student_logits / T)), without a T^2 factor.

    reduction: "mean" divides the summed KL by B*C (F.kl_div's default, what the authors used, so beta = 250 keeps its
    meaning), "batchmean" by B (the true KL), "sum" adds the rows, "none" returns the [B] per-row KL.
    Gradients flow to both logit sets. The result is float32 (float64 for float64 inputs).
    """
    _checks.check_logits(student_logits, teacher_logits)
    _checks.check_positive(temperature, "temperature")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    backend = _library.resolve_backend(backend, student_logits.device)
    if backend == "eager":
        return reference.kl_divergence(student_logits, teacher_logits, temperature, reduction)
    rows = kl_divergence_rows(student_logits, teacher_logits, temperature, backend)
    return reference.reduce_kl_rows(rows, reduction, student_logits.shape[1])


def kl_divergence_rows(student_logits, teacher_logits, temperature: float, backend: str) -> torch.Tensor:
    """Per-row KL through a fused backend; arguments already checked."""
    student_logits, teacher_logits = _checks.common_dtype(student_logits, teacher_logits)
    forward = (torch.ops.zskt_fast.kl_divergence_forward_triton if backend == "triton"
               else torch.ops.zskt_fast.kl_divergence_forward)
    return forward(student_logits, teacher_logits, float(temperature))[0]


# The Triton implementation is an op of its own (the C++ ops dispatch on the device alone); its kernels module, and
# with it Triton, is imported on first use.
@torch.library.custom_op("zskt_fast::kl_divergence_forward_triton", mutates_args=())
def _forward_triton(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from zskt_fast.kernels.triton import kl_divergence as kernels

    return kernels.forward(student_logits, teacher_logits, temperature)


@torch.library.custom_op("zskt_fast::kl_divergence_backward_triton", mutates_args=())
def _backward_triton(grad_rows: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     student_lse: torch.Tensor, teacher_lse: torch.Tensor, kl_rows: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    from zskt_fast.kernels.triton import kl_divergence as kernels

    return kernels.backward(grad_rows, student_logits, teacher_logits, student_lse, teacher_lse, kl_rows, temperature)


def _fake_forward(student_logits, teacher_logits, temperature):
    rows = student_logits.new_empty((student_logits.shape[0],),
                                    dtype=_library.accumulation_dtype(student_logits.dtype))
    return rows, torch.empty_like(rows), torch.empty_like(rows)


def _fake_backward(grad_rows, student_logits, teacher_logits, student_lse, teacher_lse, kl_rows, temperature):
    shape = student_logits.shape
    return student_logits.new_empty(shape), teacher_logits.new_empty(shape)


def _setup_context(ctx, inputs, output):
    student_logits, teacher_logits, temperature = inputs
    rows, student_lse, teacher_lse = output
    ctx.save_for_backward(student_logits, teacher_logits, student_lse, teacher_lse, rows)
    ctx.temperature = temperature
    ctx.mark_non_differentiable(student_lse, teacher_lse)


def _make_backward(backward_op):
    def backward(ctx, grad_rows, _grad_student_lse, _grad_teacher_lse):
        student_logits, teacher_logits, student_lse, teacher_lse, rows = ctx.saved_tensors
        grad_student, grad_teacher = backward_op(grad_rows, student_logits, teacher_logits, student_lse, teacher_lse,
                                                 rows, ctx.temperature)
        return (grad_student if ctx.needs_input_grad[0] else None,
                grad_teacher if ctx.needs_input_grad[1] else None, None)

    return backward


def _register(forward_name: str, backward_name: str) -> None:
    _library.register_fused_op(forward_name, backward_name, fake_forward=_fake_forward, fake_backward=_fake_backward,
                               setup_context=_setup_context, make_backward=_make_backward)


_register("zskt_fast::kl_divergence_forward_triton", "zskt_fast::kl_divergence_backward_triton")
if _library.compiled_available():
    _register("zskt_fast::kl_divergence_forward", "zskt_fast::kl_divergence_backward")
