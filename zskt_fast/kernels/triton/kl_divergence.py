"""Triton kernels of the KL divergence op, and their launchers registered as the ops
`zskt_fast::kl_divergence_{forward,backward}_triton` (torch.library.triton_op: torch.compile sees the kernels).

One program per row; the class dimension is tiled in blocks of at most 1024, so rows of any length work. Forward: one
sweep over both rows (online softmax: running maxima, sums rescaled when a tile raises them). Backward: one sweep,
writing only the gradients asked for.
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
    """One sweep over both rows (online softmax). With u = x_t / T, v = x_s / T and the running maxima m_t, m_s of
    the tiles read so far: per lane the sums of exp(v - m_s) and of e = exp(a), a = u - m_t, and W = sum e (a - b),
    b = v - m_s, all taken again relative to the new maxima when a tile raises them; KL = W / sum_t - log sum_t +
    log sum_s. The maxima and log-sums are kept apart so that log p = (x / T - m) - log-sum stays exact for the
    largest logits when the softmax saturates. A class with teacher mass and v = -inf makes the KL +inf; a row that is
    all -inf, or has a +inf, a NaN KL."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    s_row = s_ptr + row * C
    t_row = t_ptr + row * C
    neg_inf = float("-inf")
    m_s = tl.full([], neg_inf, ACC)
    m_t = tl.full([], neg_inf, ACC)
    sum_s = tl.zeros([BLOCK], ACC)
    sum_t = tl.zeros([BLOCK], ACC)
    weighted = tl.zeros([BLOCK], ACC)
    infinite = tl.zeros([BLOCK], tl.int32)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        u = tl.load(t_row + start + offs, mask=mask, other=neg_inf).to(ACC) * inv_tau
        v = tl.load(s_row + start + offs, mask=mask, other=neg_inf).to(ACC) * inv_tau
        new_m_t = tl.maximum(m_t, tl.max(u, axis=0))
        new_m_s = tl.maximum(m_s, tl.max(v, axis=0))
        # What was summed so far, relative to the new maxima. While a maximum is still -inf its sums are 0 and no
        # class has entered W: nothing moves (and no -inf - -inf is formed).
        known_t = m_t > neg_inf
        known_s = m_s > neg_inf
        step_t = tl.where(known_t, m_t, 0.0) - tl.where(known_t, new_m_t, 0.0)
        step_s = tl.where(known_s, m_s, 0.0) - tl.where(known_s, new_m_s, 0.0)
        factor_t = tl.exp(step_t)
        factor_s = tl.exp(step_s)
        shift = tl.where(known_s, step_t - step_s, 0.0)
        weighted = factor_t * (weighted + shift * sum_t)
        sum_t = sum_t * factor_t
        sum_s = sum_s * factor_s
        m_t = new_m_t
        m_s = new_m_s
        has_t = u != neg_inf  # padding lanes are -inf; NaN logits are summed, so that the KL is NaN
        has_s = v != neg_inf
        a = tl.where(has_t, u - m_t, 0.0)
        b = tl.where(has_s, v - m_s, 0.0)
        e = tl.where(has_t, tl.exp(a), 0.0)
        sum_t += e
        sum_s += tl.where(has_s, tl.exp(b), 0.0)
        # p_t log p_t = 0 where p_t underflows to 0, as in F.kl_div
        weighted += tl.where((e > 0) & has_s, e * (a - b), 0.0)
        infinite = tl.maximum(infinite, ((e > 0) & ~has_s).to(tl.int32))
    finite = (tl.abs(m_s) < float("inf")) & (tl.abs(m_t) < float("inf"))
    total_s = tl.sum(sum_s, axis=0)
    total_t = tl.sum(sum_t, axis=0)
    log_sum_s = tl.where(finite, tl.log(total_s), 0.0)
    log_sum_t = tl.where(finite, tl.log(total_t), 0.0)
    kl = (tl.sum(weighted, axis=0) / total_t - log_sum_t) + log_sum_s
    kl = tl.where(tl.max(infinite, axis=0) > 0, float("inf"), kl)
    tl.store(kl_ptr + row, tl.where(finite, kl, float("nan")))
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
