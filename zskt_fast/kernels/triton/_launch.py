"""What every Triton launcher here needs: the accumulation type of an input dtype, warps fitted to a block, float
arguments that keep float64's precision, and the launch wrapper."""
from __future__ import annotations

import numpy
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton
from triton.runtime.jit import JITFunction

from ...common import accumulation_dtype


def accumulator(dtype: torch.dtype):
    """The Triton type the kernels accumulate in for inputs of `dtype` (float64 for float64, else float32)."""
    return tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32


def num_warps(block: int) -> int:
    """Four elements per thread of a 1-D block, between 1 and 8 warps."""
    return max(1, min(8, block // 128))


def float32_pair(value: float) -> tuple[float, float]:
    """`value` as (hi, lo), float32 numbers whose float64 sum carries 48 bits of it. Compiled Triton passes a Python
    float to a kernel as float32, which would cost the float64 kernels their precision (1e-7 relative where 1 / T or
    1 / C is not a float32); they take such a pair and rebuild the value with `from_pair`."""
    hi = float(numpy.float32(value))
    return hi, float(numpy.float32(value - hi))


@triton.jit
def from_pair(hi, lo, ACC: tl.constexpr):
    """The value of a `float32_pair` in ACC."""
    if ACC == tl.float64:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return hi


def launcher(kernel):
    """wrap_triton(kernel), through which torch.compile sees the launch; under TRITON_INTERPRET=1 the kernel itself
    (the interpreter's kernels run eagerly on CPU tensors, and torch 2.11's wrap_triton refuses them), with numpy's
    warnings of invalid values off: the interpreter evaluates both sides of every tl.where, and the kernels guard
    -inf - -inf and log(0) with tl.where."""
    return wrap_triton(kernel) if isinstance(kernel, JITFunction) else _Quiet(kernel)


class _Quiet:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def quietly(*args, **kwargs):
            with numpy.errstate(invalid="ignore", divide="ignore"):
                return launch(*args, **kwargs)

        return quietly
