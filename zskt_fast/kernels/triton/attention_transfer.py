"""Triton kernels of the attention-transfer op, and their launchers registered as the ops
`zskt_fast::attention_transfer_{forward,backward}_triton` (torch.library.triton_op: torch.compile sees the kernels).
They read NCHW-contiguous features; other layouts are copied to NCHW first and the gradient is returned in the input's
layout. The fake kernels and the autograd formula are registered by `zskt_fast.ops.attention_transfer`.

Forward, three launches per layer: channel means of squares for the student and for the teacher (programs over
(sample, block of positions), each sweeping the channels), then one program per sample for both norms, the
normalised maps and the squared difference. Backward, one launch per side: programs over (sample, chunk of channels),
each recomputing the sample's <q, g_q> from the [H*W] maps and writing its chunk of the gradient. No atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...common import accumulation_dtype
from ._launch import accumulator, float32_pair, from_pair, launcher, num_warps

NORM_EPS = 1e-12  # F.normalize's default
BLOCK_HW = 256
ELEMENTS_PER_PROGRAM = 16384


@triton.jit
def _channel_mean_of_squares_kernel(x_ptr,  # [B, C, HW] features, NCHW-contiguous
                                    a_ptr,  # [B, HW] out: mean over channels of x^2, ACC
                                    C, HW, inv_c_hi, inv_c_lo,  # 1 / C, a `float32_pair`
                                    BLOCK: tl.constexpr, ACC: tl.constexpr):
    inv_c = from_pair(inv_c_hi, inv_c_lo, ACC)
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    base = x_ptr + b * C * HW + offs
    total = tl.zeros([BLOCK], ACC)
    for c in range(0, C):
        x = tl.load(base + c * HW, mask=mask, other=0.0).to(ACC)
        total += x * x
    tl.store(a_ptr + b * HW + offs, total * inv_c, mask=mask)


@triton.jit
def _normalise_and_compare_kernel(qs_ptr,  # [B, HW] in: student channel means; out: normalised map q_s, ACC
                                  qt_ptr,  # [B, HW] the same for the teacher, ACC
                                  ns_ptr,  # [B] out: L2 norm of the student means, ACC
                                  nt_ptr,  # [B] out: L2 norm of the teacher means, ACC
                                  d_ptr,  # [B] out: sum over HW of (q_s - q_t)^2, ACC
                                  HW, eps, BLOCK: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    sum_s = tl.zeros([BLOCK], ACC)
    sum_t = tl.zeros([BLOCK], ACC)
    for start in range(0, HW, BLOCK):
        mask = start + offs < HW
        a_s = tl.load(qs_ptr + b * HW + start + offs, mask=mask, other=0.0)
        a_t = tl.load(qt_ptr + b * HW + start + offs, mask=mask, other=0.0)
        sum_s += a_s * a_s
        sum_t += a_t * a_t
    norm_s = tl.sqrt(tl.sum(sum_s, axis=0))
    norm_t = tl.sqrt(tl.sum(sum_t, axis=0))
    inv_s = 1.0 / tl.maximum(norm_s, eps)
    inv_t = 1.0 / tl.maximum(norm_t, eps)
    diff = tl.zeros([BLOCK], ACC)
    for start in range(0, HW, BLOCK):
        mask = start + offs < HW
        q_s = tl.load(qs_ptr + b * HW + start + offs, mask=mask, other=0.0) * inv_s
        q_t = tl.load(qt_ptr + b * HW + start + offs, mask=mask, other=0.0) * inv_t
        tl.store(qs_ptr + b * HW + start + offs, q_s, mask=mask)
        tl.store(qt_ptr + b * HW + start + offs, q_t, mask=mask)
        diff += (q_s - q_t) * (q_s - q_t)
    tl.store(ns_ptr + b, norm_s)
    tl.store(nt_ptr + b, norm_t)
    tl.store(d_ptr + b, tl.sum(diff, axis=0))


@triton.jit
def _attention_gradient_kernel(g_ptr,  # [B] upstream gradient of each sample's squared difference, ACC
                               x_ptr,  # [B, C, HW] this side's features, NCHW-contiguous
                               q_ptr,  # [B, HW] this side's normalised map, ACC
                               qo_ptr,  # [B, HW] the other side's normalised map, ACC
                               n_ptr,  # [B] this side's norm of the channel means, ACC
                               out_ptr,  # [B, C, HW] out: gradient of x, its dtype
                               C, HW, channels_per_program, inv_c_hi, inv_c_lo,  # 1 / C, a `float32_pair`
                               eps, BLOCK: tl.constexpr, ACC: tl.constexpr):
    # the forward's 1 / C: the scale of the channel means cancels out of the normalised map exactly
    inv_c = from_pair(inv_c_hi, inv_c_lo, ACC)
    b = tl.program_id(1).to(tl.int64)
    c_start = tl.program_id(0) * channels_per_program
    offs = tl.arange(0, BLOCK)
    two_g = 2.0 * tl.load(g_ptr + b).to(ACC)
    dot_parts = tl.zeros([BLOCK], ACC)
    for start in range(0, HW, BLOCK):
        mask = start + offs < HW
        q = tl.load(q_ptr + b * HW + start + offs, mask=mask, other=0.0)
        qo = tl.load(qo_ptr + b * HW + start + offs, mask=mask, other=0.0)
        dot_parts += q * (two_g * (q - qo))
    norm = tl.load(n_ptr + b)
    projected = norm > eps
    dot = tl.where(projected, tl.sum(dot_parts, axis=0), 0.0)
    scale = (2.0 * inv_c) / tl.where(projected, norm, eps)
    for c in range(c_start, tl.minimum(c_start + channels_per_program, C)):
        row = (b * C + c) * HW
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            q = tl.load(q_ptr + b * HW + start + offs, mask=mask, other=0.0)
            qo = tl.load(qo_ptr + b * HW + start + offs, mask=mask, other=0.0)
            ga = (two_g * (q - qo) - q * dot) * scale
            x = tl.load(x_ptr + row + start + offs, mask=mask, other=0.0).to(ACC)
            tl.store(out_ptr + row + start + offs, (ga * x).to(out_ptr.dtype.element_ty), mask=mask)


def _block(HW: int) -> int:
    return min(BLOCK_HW, triton.next_power_of_2(HW))


@triton_op("zskt_fast::attention_transfer_forward_triton", mutates_args=())
def attention_transfer_forward(student_features: torch.Tensor, teacher_features: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sq_diff [B], q_s [B, HW], q_t [B, HW], norm_s [B], norm_t [B]) of [B, C, H, W] maps of one dtype."""
    s, t = student_features.contiguous(), teacher_features.contiguous()
    B, _, H, W = s.shape
    HW = H * W
    acc = accumulation_dtype(s.dtype)
    q_s = torch.empty((B, HW), dtype=acc, device=s.device)
    q_t = torch.empty_like(q_s)
    norm_s, norm_t, sq_diff = (torch.empty(B, dtype=acc, device=s.device) for _ in range(3))
    block = _block(HW)
    for x, a in ((s, q_s), (t, q_t)):
        C = x.shape[1]
        launcher(_channel_mean_of_squares_kernel)[(B, triton.cdiv(HW, block))](
            x, a, C, HW, *float32_pair(1.0 / C), BLOCK=block, ACC=accumulator(s.dtype), num_warps=num_warps(block))
    launcher(_normalise_and_compare_kernel)[(B,)](q_s, q_t, norm_s, norm_t, sq_diff, HW, NORM_EPS, BLOCK=block,
                                                  ACC=accumulator(s.dtype), num_warps=num_warps(block))
    return sq_diff, q_s, q_t, norm_s, norm_t


@triton_op("zskt_fast::attention_transfer_backward_triton", mutates_args=())
def attention_transfer_backward(grad_sq_diff: torch.Tensor, features: torch.Tensor, attention: torch.Tensor,
                                other_attention: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Gradient of one side's [B, C, H, W] features, in their dtype and layout."""
    x = features.contiguous()
    B, C, H, W = x.shape
    HW = H * W
    acc = attention.dtype
    grad = torch.empty_like(features)
    out = grad if grad.is_contiguous() else torch.empty_like(x, memory_format=torch.contiguous_format)
    channels_per_program = max(1, min(C, triton.cdiv(ELEMENTS_PER_PROGRAM, HW)))
    grid = (triton.cdiv(C, channels_per_program), B)
    block = _block(HW)
    launcher(_attention_gradient_kernel)[grid](grad_sq_diff.to(acc).contiguous(), x, attention.contiguous(),
                                               other_attention.to(acc).contiguous(), norm.to(acc).contiguous(),
                                               out, C, HW, channels_per_program, *float32_pair(1.0 / C), NORM_EPS,
                                               BLOCK=block, ACC=accumulator(x.dtype), num_warps=num_warps(block))
    if out is not grad:
        grad.copy_(out)
    return grad


TRITON_OPS = (attention_transfer_forward, attention_transfer_backward)
