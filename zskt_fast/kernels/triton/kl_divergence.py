"""Triton kernels of the KL divergence op and their launchers.

One program per row; the class dimension is tiled in blocks of at most 1024, so rows of any length work. Forward:
three sweeps over the row (max, sum of exponentials, KL), all reading from cache after the first. Backward: one sweep.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 1024


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _row_logsumexp(row_ptr, C, inv_tau, offs, BLOCK: tl.constexpr, ACC: tl.constexpr):
    running_max = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        x = tl.load(row_ptr + start + offs, mask=mask, other=float("-inf")).to(ACC) * inv_tau
        running_max = tl.maximum(running_max, x)
    m = tl.max(running_max, axis=0)
    total = tl.zeros([BLOCK], ACC)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        x = tl.load(row_ptr + start + offs, mask=mask, other=float("-inf")).to(ACC) * inv_tau
        total += tl.where(mask, tl.exp(x - m), 0.0)
    return m + tl.log(tl.sum(total, axis=0))


@triton.jit
def _kl_forward_kernel(s_ptr, t_ptr, kl_ptr, lse_s_ptr, lse_t_ptr, C, inv_tau, BLOCK: tl.constexpr,
                       ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    s_row = s_ptr + row * C
    t_row = t_ptr + row * C
    lse_s = _row_logsumexp(s_row, C, inv_tau, offs, BLOCK, ACC)
    lse_t = _row_logsumexp(t_row, C, inv_tau, offs, BLOCK, ACC)
    total = tl.zeros([BLOCK], ACC)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        log_pt = tl.load(t_row + start + offs, mask=mask, other=0.0).to(ACC) * inv_tau - lse_t
        log_ps = tl.load(s_row + start + offs, mask=mask, other=0.0).to(ACC) * inv_tau - lse_s
        p_t = tl.exp(log_pt)
        # p_t log p_t = 0 where p_t underflows to 0, as in F.kl_div
        total += tl.where(mask & (p_t > 0), p_t * (log_pt - log_ps), 0.0)
    tl.store(kl_ptr + row, tl.sum(total, axis=0))
    tl.store(lse_s_ptr + row, lse_s)
    tl.store(lse_t_ptr + row, lse_t)


@triton.jit
def _kl_backward_kernel(g_ptr, s_ptr, t_ptr, lse_s_ptr, lse_t_ptr, kl_ptr, gs_ptr, gt_ptr, C, inv_tau,
                        BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    scale = tl.load(g_ptr + row).to(ACC) * inv_tau
    lse_s = tl.load(lse_s_ptr + row)
    lse_t = tl.load(lse_t_ptr + row)
    kl = tl.load(kl_ptr + row)
    for start in range(0, C, BLOCK):
        mask = start + offs < C
        idx = row * C + start + offs
        log_pt = tl.load(t_ptr + idx, mask=mask, other=0.0).to(ACC) * inv_tau - lse_t
        log_ps = tl.load(s_ptr + idx, mask=mask, other=0.0).to(ACC) * inv_tau - lse_s
        p_t = tl.exp(log_pt)
        grad_s = scale * (tl.exp(log_ps) - p_t)
        grad_t = tl.where(p_t > 0, scale * p_t * ((log_pt - log_ps) - kl), 0.0)
        tl.store(gs_ptr + idx, grad_s.to(gs_ptr.dtype.element_ty), mask=mask)
        tl.store(gt_ptr + idx, grad_t.to(gt_ptr.dtype.element_ty), mask=mask)


def _block(C: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(C))


def forward(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    B, C = s.shape
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    kl = torch.empty(B, dtype=acc, device=s.device)
    lse_s, lse_t = torch.empty_like(kl), torch.empty_like(kl)
    _kl_forward_kernel[(B,)](s, t, kl, lse_s, lse_t, C, 1.0 / temperature, BLOCK=_block(C),
                             ACC=_acc_dtype(s.dtype))
    return kl, lse_s, lse_t


def backward(grad_rows, student_logits, teacher_logits, lse_s, lse_t, kl, temperature: float):
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    B, C = s.shape
    acc = kl.dtype
    grad_s, grad_t = torch.empty((B, C), dtype=s.dtype, device=s.device), torch.empty((B, C), dtype=t.dtype,
                                                                                      device=t.device)
    _kl_backward_kernel[(B,)](grad_rows.to(acc).contiguous(), s, t, lse_s.contiguous(), lse_t.contiguous(),
                              kl.contiguous(), grad_s, grad_t, C, 1.0 / temperature, BLOCK=_block(C),
                              ACC=_acc_dtype(s.dtype))
    return grad_s, grad_t
