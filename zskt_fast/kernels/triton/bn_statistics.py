"""Triton kernels of the batch-norm statistics op, and their launchers registered as the ops
`zskt_fast::bn_statistics_{forward,backward}_triton` (torch.library.triton_op: torch.compile sees the kernels).
They read NCHW-contiguous maps; other layouts are copied to NCHW first and the gradient is returned in the input's
layout. The fake kernels and the autograd formula are registered by `zskt_fast.ops.bn_statistics_prior`.

Forward: programs over (channel, chunk of samples). A program reads each block of a row once and takes the block's
exact mean and sum of squared deviations from the values in registers, then merges them into its running pair
(Chan et al.'s parallel formula), so the variance never comes from a difference of large sums. Each program writes
its partial (mean, M2); the partials of a channel are merged in PyTorch, in a fixed order. No atomics.
Backward: one program per (sample and channel, block of positions): d/dx = g_mean / N + g_var * 2 (x - mean) / N.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...common import accumulation_dtype
from ._launch import accumulator, launcher, num_warps

MAX_BLOCK = 1024
ELEMENTS_PER_PROGRAM = 16384


@triton.jit
def _partial_statistics_kernel(x_ptr,  # [B, C, HW] map, NCHW-contiguous
                               mean_ptr,  # [C, P] out: each program's mean, ACC
                               m2_ptr,  # [C, P] out: each program's sum of squared deviations, ACC
                               B, C, HW, samples_per_program, P, BLOCK: tl.constexpr, ACC: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    count = tl.zeros([1], ACC)
    mean = tl.zeros([1], ACC)
    m2 = tl.zeros([1], ACC)
    for b in range(p * samples_per_program, tl.minimum((p + 1) * samples_per_program, B)):
        row = x_ptr + (b * C + c) * HW
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(row + start + offs, mask=mask, other=0.0).to(ACC)
            n = tl.sum(mask.to(ACC), axis=0)
            block_mean = tl.sum(x, axis=0) / n
            deviation = tl.where(mask, x - block_mean, 0.0)
            block_m2 = tl.sum(deviation * deviation, axis=0)
            total = count + n
            delta = block_mean - mean
            mean += delta * (n / total)
            m2 += block_m2 + delta * delta * (count * n / total)
            count = total
    out = c * P + p + tl.arange(0, 1)
    tl.store(mean_ptr + out, mean)
    tl.store(m2_ptr + out, m2)


@triton.jit
def _gradient_kernel(x_ptr,  # [B, C, HW] map, NCHW-contiguous
                     a_ptr,  # [C] g_mean / N, ACC
                     k_ptr,  # [C] 2 g_var / N, ACC
                     m_ptr,  # [C] mean, ACC
                     out_ptr,  # [B, C, HW] out: gradient of the map, its dtype
                     C, HW, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = row % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    x = tl.load(x_ptr + row * HW + offs, mask=mask, other=0.0).to(ACC)
    grad = tl.load(a_ptr + c) + tl.load(k_ptr + c) * (x - tl.load(m_ptr + c))
    tl.store(out_ptr + row * HW + offs, grad.to(out_ptr.dtype.element_ty), mask=mask)


def _block(HW: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(HW))


def merge_partials(means: torch.Tensor, m2s: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and biased variance of each row's union of parts, from the parts' [C, P] means and sums of squared
    deviations and their [P] counts (Chan et al.: M2 = sum_p M2_p + n_p (mean_p - mean)^2)."""
    total = counts.sum()
    mean = (means * counts).sum(dim=1) / total
    m2 = (m2s + counts * (means - mean[:, None]) ** 2).sum(dim=1)
    return mean, m2 / total


@triton_op("zskt_fast::bn_statistics_forward_triton", mutates_args=())
def bn_statistics_forward(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [C], biased variance [C]) over (N, H, W) of a [B, C, H, W] map."""
    x = input.contiguous()
    B, C, H, W = x.shape
    HW = H * W
    acc = accumulation_dtype(x.dtype)
    samples_per_program = max(1, min(B, triton.cdiv(ELEMENTS_PER_PROGRAM, HW)))
    P = triton.cdiv(B, samples_per_program)
    means = torch.empty((C, P), dtype=acc, device=x.device)
    m2s = torch.empty_like(means)
    block = _block(HW)
    launcher(_partial_statistics_kernel)[(C, P)](x, means, m2s, B, C, HW, samples_per_program, P, BLOCK=block,
                                                 ACC=accumulator(x.dtype), num_warps=num_warps(block))
    samples = torch.full((P,), samples_per_program, dtype=acc, device=x.device)
    samples[-1] = B - samples_per_program * (P - 1)
    return merge_partials(means, m2s, samples * HW)


@triton_op("zskt_fast::bn_statistics_backward_triton", mutates_args=())
def bn_statistics_backward(grad_mean: torch.Tensor, grad_var: torch.Tensor, input: torch.Tensor,
                           mean: torch.Tensor) -> torch.Tensor:
    """Gradient of the [B, C, H, W] map, in its dtype and layout."""
    x = input.contiguous()
    B, C, H, W = x.shape
    HW = H * W
    acc = mean.dtype
    inv_n = 1.0 / (B * HW)
    a = (grad_mean.to(acc) * inv_n).contiguous()
    k = (grad_var.to(acc) * (2.0 * inv_n)).contiguous()
    grad = torch.empty_like(input)
    out = grad if grad.is_contiguous() else torch.empty_like(x, memory_format=torch.contiguous_format)
    block = _block(HW)
    launcher(_gradient_kernel)[(B * C, triton.cdiv(HW, block))](x, a, k, mean.contiguous(), out, C, HW, BLOCK=block,
                                                                ACC=accumulator(x.dtype), num_warps=num_warps(block))
    if out is not grad:
        grad.copy_(out)
    return grad


TRITON_OPS = (bn_statistics_forward, bn_statistics_backward)
