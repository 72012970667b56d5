"""Triton kernels of the KL divergence op, and their launchers registered as the ops
`zskt_fast::kl_divergence_{forward,backward}_triton` (torch.library.triton_op: torch.compile sees the kernels).

Forward: one sweep (online softmax), each logit read once. Each of a program's BLOCK lanes folds its classes into a
running state (csrc/kl_state.h: both maxima and sums, and the KL's sum relative to the teacher's maximum class, so that
the teacher gradient of a saturated row does not cancel); the lanes' states are merged at the end. Short rows take a
program each; long rows are cut into chunks, a program each, with enough chunks to fill a GPU at a small batch, and a
second kernel merges each row's chunk states. The cut depends on B and C only. Backward: the same cut, no reduction,
writing only the gradients asked for.
The fake kernels and the autograd formula are registered by `zskt_fast.ops.kl_divergence`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ...common import accumulation_dtype
from ._launch import accumulator, float32_pair, from_pair, launcher, num_warps

MAX_BLOCK = 1024
CLASSES_PER_CHUNK = 4096  # rows longer than this are cut into chunks, at most one per this many classes,
TARGET_PROGRAMS = 1024  # and as many as reach this many programs in all
STATE = tl.constexpr(7)  # (m_t, sum_t, y_ref, w, m_s, sum_s, infinite) per chunk
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _exp(d, tau, k, ACC: tl.constexpr):
    """exp(d tau), k = tau log2(e). In float32 as exp2(d k): one ex2.approx.ftz instruction on the GPU (tl.exp takes
    four, with log2(e) multiplied in again), results below 2^-126 flushed to 0, as the CUDA kernels' Base2Exp
    (csrc/kl_state.h). In float64 exp itself: log2(e) folded in at float32, as scalar arguments arrive, would cost
    float64 its precision."""
    if ACC == tl.float64:
        return tl.exp(d * tau)
    else:
        return tl.exp2(d * k)


@triton.jit
def _exp_over(d, log_total, tau, k, ACC: tl.constexpr):
    """exp(d tau - log_total), as _exp."""
    if ACC == tl.float64:
        return tl.exp(d * tau - log_total)
    else:
        return tl.exp2(d * k - log_total * LOG2E)


@triton.jit
def _rescaled(total, m, new_m, tau, k, ACC: tl.constexpr):
    # an empty sum stays 0 (exp(-inf - -inf) is NaN), a NaN one stays NaN
    return tl.where(total == 0, 0.0, total * _exp(m - new_m, tau, k, ACC))


@triton.jit
def _merge_lanes(m_t, sum_t, y_ref, w, m_s, sum_s, infinite, lanes, tau, k, ACC: tl.constexpr):
    """The states of all lanes merged into one (scalars): each lane's sums re-expressed relative to the largest
    maxima, and its w to the reference class of the first lane that holds the teacher's maximum."""
    top_t = tl.max(m_t, axis=0)
    first = tl.min(tl.where(m_t == top_t, lanes, 1 << 30), axis=0)
    top_y = tl.sum(tl.where(lanes == first, y_ref, 0.0), axis=0)
    f = _exp(m_t - top_t, tau, k, ACC)
    w = tl.where((sum_t == 0) | (f == 0), 0.0, f * (w + ((m_t - top_t) + (top_y - y_ref)) * sum_t))
    top_s = tl.max(m_s, axis=0)
    return (top_t, tl.sum(_rescaled(sum_t, m_t, top_t, tau, k, ACC), axis=0), top_y, tl.sum(w, axis=0), top_s,
            tl.sum(_rescaled(sum_s, m_s, top_s, tau, k, ACC), axis=0), tl.max(infinite, axis=0))


@triton.jit
def _finish(m_t, sum_t, y_ref, w, m_s, sum_s, infinite, tau, kl_ptr, stats_s_ptr, stats_t_ptr, row):
    """The row's KL and statistics, as KlState::finish."""
    finite = ((m_t > -float("inf")) & (m_t < float("inf")) & (m_s > -float("inf")) & (m_s < float("inf"))
              & (sum_t == sum_t) & (sum_s == sum_s))
    log_sum_s = tl.where(finite, tl.log(sum_s), 0.0)
    log_sum_t = tl.where(finite, tl.log(sum_t), 0.0)
    r = tl.where(finite, tau * w / sum_t, 0.0)
    kl = tl.where(infinite > 0, float("inf"), r + ((log_sum_s - log_sum_t) - (y_ref - m_s) * tau))
    tl.store(kl_ptr + row, tl.where(finite, kl, float("nan")))
    tl.store(stats_s_ptr + 2 * row, m_s)
    tl.store(stats_s_ptr + 2 * row + 1, log_sum_s)
    tl.store(stats_t_ptr + 4 * row, m_t)
    tl.store(stats_t_ptr + 4 * row + 1, log_sum_t)
    tl.store(stats_t_ptr + 4 * row + 2, y_ref)
    tl.store(stats_t_ptr + 4 * row + 3, r)


@triton.jit
def _kl_forward_kernel(s_ptr,  # [B, C] student logits
                       t_ptr,  # [B, C] teacher logits, same dtype
                       partial_ptr,  # [B, CHUNKS, STATE] out when CHUNKS > 1: each chunk's state, ACC
                       kl_ptr,  # [B] out when CHUNKS == 1: KL of each row, ACC
                       stats_s_ptr,  # [B, 2] out when CHUNKS == 1: (m_s, log sum_s), ACC
                       stats_t_ptr,  # [B, 4] out when CHUNKS == 1: (m_t, log sum_t, y_ref, R), ACC
                       C, chunk_size, tau_hi, tau_lo, k,  # `scales`
                       CHUNKS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Differences of logits are taken before scaling by tau = 1 / T (csrc/kl_state.h): exactly 0 at the reference
    class, whether or not Triton fuses the scaling into a multiply-add."""
    tau = from_pair(tau_hi, tau_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    lanes = tl.arange(0, BLOCK)
    s_row = s_ptr + row * C
    t_row = t_ptr + row * C
    first = chunk * chunk_size
    end = tl.minimum(first + chunk_size, C)
    m_t = tl.full([BLOCK], -float("inf"), ACC)
    m_s = tl.full([BLOCK], -float("inf"), ACC)
    sum_t = tl.zeros([BLOCK], ACC)
    sum_s = tl.zeros([BLOCK], ACC)
    y_ref = tl.zeros([BLOCK], ACC)
    w = tl.zeros([BLOCK], ACC)
    infinite = tl.zeros([BLOCK], tl.int32)
    for start in range(first, end, BLOCK):
        mask = start + lanes < end
        x = tl.load(t_row + start + lanes, mask=mask, other=-float("inf")).to(ACC)
        y = tl.load(s_row + start + lanes, mask=mask, other=-float("inf")).to(ACC)
        # exp(-|x - m| tau) is exp((m - x) tau) where x raises the maximum and exp((x - m) tau) elsewhere: one exp
        z_s = _exp(-tl.abs(y - m_s), tau, k, ACC)
        grow_s = y > m_s
        sum_s = tl.where(grow_s, tl.where(sum_s == 0, 0.0, sum_s * z_s) + 1.0,
                         tl.where(y == -float("inf"), sum_s, sum_s + z_s))  # a NaN y makes sum_s NaN
        m_s = tl.where(grow_s, y, m_s)
        mass = x != -float("inf")  # a class without teacher mass (masked) drops out
        infinite = tl.where(mass & (y == -float("inf")), 1, infinite)
        delta = x - m_t
        z_t = _exp(-tl.abs(delta), tau, k, ACC)
        grow_t = x > m_t
        # a new maximum: earlier terms e (a - b) become z e (a - b - delta + (y - y_ref)); its own term is 0
        w_grown = tl.where((sum_t == 0) | (z_t == 0), 0.0, z_t * (w + ((y - y_ref) - delta) * sum_t))
        w_added = w + tl.where(z_t > 0, z_t * (delta - (y - y_ref)), 0.0)
        w = tl.where(grow_t, w_grown, tl.where(mass, w_added, w))
        sum_t = tl.where(grow_t, tl.where(sum_t == 0, 0.0, sum_t * z_t) + 1.0,
                         tl.where(mass, sum_t + z_t, sum_t))  # a NaN x makes sum_t NaN
        y_ref = tl.where(grow_t, y, y_ref)
        m_t = tl.where(grow_t, x, m_t)
    m_t, sum_t, y_ref, w, m_s, sum_s, infinite = _merge_lanes(m_t, sum_t, y_ref, w, m_s, sum_s, infinite, lanes, tau,
                                                              k, ACC)
    if CHUNKS == 1:
        _finish(m_t, sum_t, y_ref, w, m_s, sum_s, infinite, tau, kl_ptr, stats_s_ptr, stats_t_ptr, row)
    else:
        out = partial_ptr + (row * CHUNKS + chunk) * STATE
        tl.store(out, m_t)
        tl.store(out + 1, sum_t)
        tl.store(out + 2, y_ref)
        tl.store(out + 3, w)
        tl.store(out + 4, m_s)
        tl.store(out + 5, sum_s)
        tl.store(out + 6, infinite.to(m_t.dtype))


@triton.jit
def _kl_merge_chunks_kernel(partial_ptr,  # [B, CHUNKS, STATE] from _kl_forward_kernel, ACC
                            kl_ptr, stats_s_ptr, stats_t_ptr,  # out, as _kl_forward_kernel's
                            tau_hi, tau_lo, k,  # `scales`
                            CHUNKS: tl.constexpr, LANES: tl.constexpr, ACC: tl.constexpr):
    tau = from_pair(tau_hi, tau_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, LANES)
    mask = lanes < CHUNKS
    at = partial_ptr + (row * CHUNKS + lanes) * STATE
    m_t, sum_t, y_ref, w, m_s, sum_s, infinite = _merge_lanes(
        tl.load(at, mask=mask, other=-float("inf")), tl.load(at + 1, mask=mask, other=0.0),
        tl.load(at + 2, mask=mask, other=0.0), tl.load(at + 3, mask=mask, other=0.0),
        tl.load(at + 4, mask=mask, other=-float("inf")), tl.load(at + 5, mask=mask, other=0.0),
        tl.load(at + 6, mask=mask, other=0.0), lanes, tau, k, ACC)
    _finish(m_t, sum_t, y_ref, w, m_s, sum_s, infinite, tau, kl_ptr, stats_s_ptr, stats_t_ptr, row)


@triton.jit
def _kl_backward_kernel(g_ptr,  # [B] upstream gradient of each row's KL, ACC
                        s_ptr,  # [B, C] student logits
                        t_ptr,  # [B, C] teacher logits
                        stats_s_ptr,  # [B, 2] from the forward, ACC
                        stats_t_ptr,  # [B, 4] from the forward, ACC
                        gs_ptr,  # [B, C] out: gradient of the student logits, input dtype (if STUDENT)
                        gt_ptr,  # [B, C] out: gradient of the teacher logits, input dtype (if TEACHER)
                        C, chunk_size, tau_hi, tau_lo, k,  # `scales`
                        BLOCK: tl.constexpr, ACC: tl.constexpr, STUDENT: tl.constexpr, TEACHER: tl.constexpr):
    """The gradient formulas of csrc/kl_state.h."""
    tau = from_pair(tau_hi, tau_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    first = tl.program_id(1) * chunk_size
    end = tl.minimum(first + chunk_size, C)
    offs = tl.arange(0, BLOCK)
    scale = tl.load(g_ptr + row).to(ACC) * tau
    m_s, log_sum_s = tl.load(stats_s_ptr + 2 * row), tl.load(stats_s_ptr + 2 * row + 1)
    m_t, log_sum_t = tl.load(stats_t_ptr + 4 * row), tl.load(stats_t_ptr + 4 * row + 1)
    y_ref, r = tl.load(stats_t_ptr + 4 * row + 2), tl.load(stats_t_ptr + 4 * row + 3)
    for start in range(first, end, BLOCK):
        mask = start + offs < end
        idx = row * C + start + offs
        a = tl.load(t_ptr + idx, mask=mask, other=0.0).to(ACC) - m_t
        y = tl.load(s_ptr + idx, mask=mask, other=0.0).to(ACC)
        p_t = _exp_over(a, log_sum_t, tau, k, ACC)
        if STUDENT:
            grad_s = scale * (_exp_over(y - m_s, log_sum_s, tau, k, ACC) - p_t)
            tl.store(gs_ptr + idx, grad_s.to(gs_ptr.dtype.element_ty), mask=mask)
        if TEACHER:
            grad_t = tl.where(p_t == 0, 0.0, scale * p_t * ((a - (y - y_ref)) * tau - r))
            tl.store(gt_ptr + idx, grad_t.to(gt_ptr.dtype.element_ty), mask=mask)


def scales(temperature: float) -> tuple[float, float, float]:
    """(tau_hi, tau_lo, k) for the kernels: tau = 1 / T as a `float32_pair`, and k = tau log2(e)."""
    tau = 1.0 / temperature
    return *float32_pair(tau), tau * LOG2E.value


def _block(C: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(C))


def chunking(B: int, C: int) -> tuple[int, int]:
    """(chunks per row, classes per chunk, a multiple of the block) for rows of C classes at batch B."""
    block = _block(C)
    chunks = 1
    if C > CLASSES_PER_CHUNK:
        chunks = max(1, min(triton.cdiv(C, CLASSES_PER_CHUNK), triton.cdiv(TARGET_PROGRAMS, B)))
    chunk_size = triton.cdiv(triton.cdiv(C, chunks), block) * block
    return triton.cdiv(C, chunk_size), chunk_size


@triton_op("zskt_fast::kl_divergence_forward_triton", mutates_args=())
def kl_divergence_forward(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kl [B], stats_s [B, 2], stats_t [B, 4]) of [B, C] logits of one dtype."""
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    B, C = s.shape
    kl = torch.empty(B, dtype=accumulation_dtype(s.dtype), device=s.device)
    stats_s = torch.empty((B, 2), dtype=kl.dtype, device=s.device)
    stats_t = torch.empty((B, 4), dtype=kl.dtype, device=s.device)
    block = _block(C)
    chunks, chunk_size = chunking(B, C)
    # one chunk per row: the kernel writes the results directly, and `partial` is a stand-in it never touches
    partial = torch.empty((B, chunks, STATE.value), dtype=kl.dtype, device=s.device) if chunks > 1 else kl
    tau_hi_lo_k, acc = scales(temperature), accumulator(s.dtype)
    launcher(_kl_forward_kernel)[(B, chunks)](s, t, partial, kl, stats_s, stats_t, C, chunk_size, *tau_hi_lo_k,
                                              CHUNKS=chunks, BLOCK=block, ACC=acc, num_warps=num_warps(block))
    if chunks > 1:
        launcher(_kl_merge_chunks_kernel)[(B,)](partial, kl, stats_s, stats_t, *tau_hi_lo_k, CHUNKS=chunks,
                                                LANES=triton.next_power_of_2(chunks), ACC=acc)
    return kl, stats_s, stats_t


@triton_op("zskt_fast::kl_divergence_backward_triton", mutates_args=())
def kl_divergence_backward(grad_rows: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           student_stats: torch.Tensor, teacher_stats: torch.Tensor, temperature: float,
                           output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the [B, C] logit sets that output_mask names (student, teacher), in their dtype, from the [B]
    upstream gradient and the forward's row statistics; one not asked for is an empty [0] tensor."""
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    B, C = s.shape
    acc = student_stats.dtype
    student, teacher = bool(output_mask[0]), bool(output_mask[1])
    grad_s = torch.empty((B, C) if student else (0,), dtype=s.dtype, device=s.device)
    grad_t = torch.empty((B, C) if teacher else (0,), dtype=t.dtype, device=t.device)
    if not (student or teacher):
        return grad_s, grad_t
    block = _block(C)
    chunks, chunk_size = chunking(B, C)
    # a gradient not asked for is never written: its pointer is a stand-in (an empty tensor's may be null)
    launcher(_kl_backward_kernel)[(B, chunks)](grad_rows.to(acc).contiguous(), s, t, student_stats.to(acc).contiguous(),
                                               teacher_stats.to(acc).contiguous(), grad_s if student else s,
                                               grad_t if teacher else t, C, chunk_size, *scales(temperature),
                                               BLOCK=block, ACC=accumulator(s.dtype),
                                               STUDENT=student, TEACHER=teacher, num_warps=num_warps(block))
    return grad_s, grad_t


TRITON_OPS = (kl_divergence_forward, kl_divergence_backward)
