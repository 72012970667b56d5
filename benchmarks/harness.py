"""What every op benchmark shares: the backends, the three modes, the timer and the memory measurement.

Modes (as Liger-Kernel times them):
  forward   the loss with autograd recording, as training runs it
  backward  the gradients of a recorded forward (retain_graph, so it repeats over the same graph)
  full      forward + backward

Backends: `eager` (the formulas in plain PyTorch), `compile` (torch.compile of that same eager code, fullgraph) and each
fused backend the device has (cpu, cuda, triton).

Timing: on a GPU, CUDA events with the L2 cache flushed before every call (`triton.testing.do_bench`), median and
20/80% quantiles; on the CPU, wall clock over pedantic rounds with the thread count recorded. Memory: peak bytes
allocated during one call above what was allocated before it; on a GPU from `torch.cuda.max_memory_allocated`, on the
CPU from the allocator's events in the profiler (profile_memory), which sees every allocation, compiled code's
included.

Environment: ZSKT_BENCH_SMOKE=1 runs one tiny point per op, mode and backend, two rounds each (CI runs it so that the
benchmarks cannot rot; the times mean nothing). ZSKT_BENCH_SHORT=1 runs a few points per sweep, float32 and
bfloat16 (the GPU check's time budget).
"""
from __future__ import annotations

import os
import statistics

import torch

from zskt_fast.ops import _library

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
SMOKE = os.environ.get("ZSKT_BENCH_SMOKE", "0") not in ("", "0")
SHORT = os.environ.get("ZSKT_BENCH_SHORT", "0") not in ("", "0")
MODES = ("forward", "backward", "full")
BACKENDS = ["eager", "compile"] + [b for b in ("cpu", "cuda", "triton") if b in _library.available_backends(DEVICE)]
DTYPES = ([torch.float32] if SMOKE else [torch.float32, torch.bfloat16]
          + ([torch.float16] if HAS_CUDA and not SHORT else []))
QUANTILES = (0.2, 0.5, 0.8)

# One compiled function per eager loss, specialised to each shape and dtype it meets (forward, backward and full share
# it). Dynamo keeps only a few versions of a function by default and runs eager code past that, which would time
# eager under the name compile: the limit is raised above the number of points.
for _name in ("recompile_limit", "cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 1024)
_COMPILED = {}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def pick(smoke, cpu, gpu, short=None):
    """The sweep points of a benchmark: one tiny point in smoke mode, a few in short mode, else the device's list."""
    if SMOKE:
        return smoke
    if SHORT and short is not None:
        return short
    return gpu if HAS_CUDA else cpu


def randn(*shape, dtype, grad, generator):
    return torch.randn(*shape, generator=generator).to(DEVICE, dtype).requires_grad_(grad)


def loss_function(backend: str, eager_fn, fused_fn):
    """The loss of `backend`: the eager formulas, their torch.compile, or the fused op with that backend."""
    if backend == "eager":
        return eager_fn
    if backend == "compile":
        if eager_fn not in _COMPILED:
            _COMPILED[eager_fn] = torch.compile(eager_fn, fullgraph=True, dynamic=False)
        return _COMPILED[eager_fn]
    return lambda *args: fused_fn(*args, backend=backend)


def mode_function(mode: str, loss_fn, args: tuple, wrt: list[torch.Tensor]):
    """A no-argument callable doing the work that `mode` times."""
    if mode == "forward":
        return lambda: loss_fn(*args)
    if mode == "full":
        return lambda: torch.autograd.grad(loss_fn(*args), wrt)
    loss = loss_fn(*args)
    return lambda: torch.autograd.grad(loss, wrt, retain_graph=True)


def nbytes(tensors) -> int:
    """Bytes held by the tensors, lists of tensors included."""
    return sum(nbytes(t) if isinstance(t, (list, tuple)) else t.numel() * t.element_size() for t in tensors)


def time_op(benchmark, *, op: str, backend: str, mode: str, dtype: torch.dtype, sweep: str, loss_fn, inputs: tuple,
            wrt: list[torch.Tensor], **point) -> None:
    """Times `mode` of loss_fn(*inputs) (gradients with respect to `wrt`) into `benchmark`, grouped by op, mode, dtype
    and sweep. Memory floor: read every input (forward); read them and write the gradients (backward, full)."""
    read = nbytes(inputs)
    measure(benchmark, mode_function(mode, loss_fn, inputs, wrt), group=f"{op} {mode} {dtype_name(dtype)} by {sweep}",
            op=op, backend=backend, mode=mode, dtype=dtype_name(dtype), sweep=sweep,
            floor_bytes=read if mode == "forward" else read + nbytes(wrt), **point)


def synchronised(fn):
    if not HAS_CUDA:
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    return call


def peak_extra_bytes(fn) -> int:
    """Peak bytes allocated while `fn` runs, above what was allocated when it started (its outputs included)."""
    if HAS_CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw allocator events, in time order (the profiler's per-op view attributes them to ops and loses order).
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def measure(benchmark, fn, *, group: str, **info) -> None:
    """Times `fn` into `benchmark` and records its peak memory and the point's description in extra_info."""
    fn = synchronised(fn)
    for _ in range(2):  # compiles, autotunes and fills caches before anything is measured
        fn()
    info.update(device=DEVICE, threads=torch.get_num_threads(), peak_bytes=peak_extra_bytes(fn),
                gpu=torch.cuda.get_device_name() if HAS_CUDA else None)
    if HAS_CUDA and not SMOKE:
        import triton.testing

        low, median, high = triton.testing.do_bench(fn, quantiles=list(QUANTILES))
        info.update(timer="cuda events, L2 flushed", median_s=median / 1e3, q20_s=low / 1e3, q80_s=high / 1e3)
        rounds = 5  # pytest-benchmark's own wall-clock rounds, kept short: the events above are the figures
    else:
        info.update(timer="wall clock")
        rounds = 2 if SMOKE else 20
    benchmark.group = group
    benchmark.extra_info.update(info)
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0 if SMOKE else 1, iterations=1)
    if info["timer"] == "wall clock":
        times = sorted(benchmark.stats.stats.data)
        q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
        benchmark.extra_info.update(median_s=statistics.median(times), q20_s=q[0], q80_s=q[3])
