"""Triton kernels of the KL divergence op, and their launchers registered as the ops
`zskt_fast::kl_divergence_{forward,backward}_triton` (torch.library.triton_op: torch.compile sees the kernels).

One program per row; the class dimension is tiled in blocks of at most 1024, so rows of any length work. Forward: two
sweeps over both rows (their maxima; their sums of exponentials and the KL), so that the KL is formed from the row
maxima the backward uses (see RESULTS.md on one-sweep forwards and the teacher gradient). Backward: one sweep, writing
only the gradients asked for.
The fake kernels and the autograd formula are registered by `zskt_fast.ops.kl_divergence`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...common import accumulation_dtype
from ._launch import accumulator, launcher, num_warps

MAX_BLOCK = 1024


@triton.jit
def _kl_forward_kernel(s_ptr,  # [B, C] student logits
                       t_ptr,  # [B, C] teacher logits, same dtype
                       kl_ptr,  # [B] out: KL of each row, ACC
                       stats_s_ptr,  # [B, 2] out: (max, log-sum) of the student row / T, ACC
                       stats_t_ptr,  # [B, 2] out: the same of the teacher row, ACC
                       C, inv_tau, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Two sweeps over both rows: their maxima m, then, with a = x_t / T - m_t, b = x_s / T - m_s and e = exp(a), the
    sums of exp(b) and e and W = sum e (a - b), from which KL = W / sum_t - log sum_t + log sum_s. The maxima and
    log-sums are kept apart so that log p = (x / T - m) - log-sum stays exact for the largest logits when the softmax
    saturates."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    s_row = s_ptr + row * C
    t_row = t_ptr + row * C
    max_s = tl.full([BLOCK], float("-inf"), ACC)
    max_t = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        max_s = tl.maximum(max_s, tl.load(s_row + start + offs, mask=mask, other=float("-inf")).to(ACC) * inv_tau)
        max_t = tl.maximum(max_t, tl.load(t_row + start + offs, mask=mask, other=float("-inf")).to(ACC) * inv_tau)
    m_s = tl.max(max_s, axis=0)
    m_t = tl.max(max_t, axis=0)
    sum_s = tl.zeros([BLOCK], ACC)
    sum_t = tl.zeros([BLOCK], ACC)
    weighted = tl.zeros([BLOCK], ACC)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        a = tl.load(t_row + start + offs, mask=mask, other=0.0).to(ACC) * inv_tau - m_t
        b = tl.load(s_row + start + offs, mask=mask, other=0.0).to(ACC) * inv_tau - m_s
        e = tl.where(mask, tl.exp(a), 0.0)
        sum_s += tl.where(mask, tl.exp(b), 0.0)
        sum_t += e
        # p_t log p_t = 0 where p_t underflows to 0, as in F.kl_div
        weighted += tl.where(e > 0, e * (a - b), 0.0)
    log_sum_s = tl.log(tl.sum(sum_s, axis=0))
    total_t = tl.sum(sum_t, axis=0)
    log_sum_t = tl.log(total_t)
    tl.store(kl_ptr + row, (tl.sum(weighted, axis=0) / total_t - log_sum_t) + log_sum_s)
    tl.store(stats_s_ptr + 2 * row, m_s)
    tl.store(stats_s_ptr + 2 * row + 1, log_sum_s)
    tl.store(stats_t_ptr + 2 * row, m_t)
    tl.store(stats_t_ptr + 2 * row + 1, log_sum_t)


@triton.jit
def _kl_backward_kernel(g_ptr,  # [B] upstream gradient of each row's KL, ACC
                        s_ptr,  # [B, C] student logits
                        t_ptr,  # [B, C] teacher logits
                        stats_s_ptr,  # [B, 2] from the forward, ACC
                        stats_t_ptr,  # [B, 2] from the forward, ACC
                        kl_ptr,  # [B] from the forward, ACC
                        gs_ptr,  # [B, C] out: gradient of the student logits, input dtype (if STUDENT)
                        gt_ptr,  # [B, C] out: gradient of the teacher logits, input dtype (if TEACHER)
                        C, inv_tau, BLOCK: tl.constexpr, ACC: tl.constexpr, STUDENT: tl.constexpr,
                        TEACHER: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    scale = tl.load(g_ptr + row).to(ACC) * inv_tau
    m_s, log_sum_s = tl.load(stats_s_ptr + 2 * row), tl.load(stats_s_ptr + 2 * row + 1)
    m_t, log_sum_t = tl.load(stats_t_ptr + 2 * row), tl.load(stats_t_ptr + 2 * row + 1)
    kl = tl.load(kl_ptr + row)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        idx = row * C + start + offs
        log_pt = (tl.load(t_ptr + idx, mask=mask, other=0.0).to(ACC) * inv_tau - m_t) - log_sum_t
        log_ps = (tl.load(s_ptr + idx, mask=mask, other=0.0).to(ACC) * inv_tau - m_s) - log_sum_s
        p_t = tl.exp(log_pt)
        if STUDENT:
            grad_s = scale * (tl.exp(log_ps) - p_t)
            tl.store(gs_ptr + idx, grad_s.to(gs_ptr.dtype.element_ty), mask=mask)
        if TEACHER:
            grad_t = tl.where(p_t > 0, scale * p_t * ((log_pt - log_ps) - kl), 0.0)
            tl.store(gt_ptr + idx, grad_t.to(gt_ptr.dtype.element_ty), mask=mask)


def _block(C: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(C))


@triton_op("zskt_fast::kl_divergence_forward_triton", mutates_args=())
def kl_divergence_forward(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kl [B], stats_s [B, 2], stats_t [B, 2]) of [B, C] logits of one dtype."""
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    B, C = s.shape
    kl = torch.empty(B, dtype=accumulation_dtype(s.dtype), device=s.device)
    stats_s = torch.empty((B, 2), dtype=kl.dtype, device=s.device)
    stats_t = torch.empty_like(stats_s)
    block = _block(C)
    launcher(_kl_forward_kernel)[(B,)](s, t, kl, stats_s, stats_t, C, 1.0 / temperature, BLOCK=block,
                                       ACC=accumulator(s.dtype), num_warps=num_warps(block))
    return kl, stats_s, stats_t


@triton_op("zskt_fast::kl_divergence_backward_triton", mutates_args=())
def kl_divergence_backward(grad_rows: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           student_stats: torch.Tensor, teacher_stats: torch.Tensor, kl_rows: torch.Tensor,
                           temperature: float, output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the [B, C] logit sets that output_mask names (student, teacher), in their dtype, from the [B]
    upstream gradient and the forward's rows; one not asked for is an empty [0] tensor."""
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    B, C = s.shape
    acc = kl_rows.dtype
    student, teacher = bool(output_mask[0]), bool(output_mask[1])
    grad_s = torch.empty((B, C) if student else (0,), dtype=s.dtype, device=s.device)
    grad_t = torch.empty((B, C) if teacher else (0,), dtype=t.dtype, device=t.device)
    if not (student or teacher):
        return grad_s, grad_t
    block = _block(C)
    launcher(_kl_backward_kernel)[(B,)](grad_rows.to(acc).contiguous(), s, t, student_stats.contiguous(),
                                        teacher_stats.contiguous(), kl_rows.contiguous(), grad_s, grad_t, C,
                                        1.0 / temperature, BLOCK=block, ACC=accumulator(s.dtype),
                                        STUDENT=student, TEACHER=teacher, num_warps=num_warps(block))
    return grad_s, grad_t


TRITON_OPS = (kl_divergence_forward, kl_divergence_backward)
