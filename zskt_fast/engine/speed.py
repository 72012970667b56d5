"""How the steps run fast: mixed precision (and whether this CPU computes in bfloat16 natively), torch.compile modes,
and what CUDA graphs need."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile modes; those that capture CUDA graphs of their own cannot run inside ours.
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
COMPILE_CHOICES = ("auto",) + COMPILE_MODES
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")
# CPU features that give bfloat16 arithmetic in hardware (dot products or tiles): x86-64's AMX and AVX-512 BF16,
# Arm's BF16 extension. Without them bfloat16 is emulated in float32 and gains nothing.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
CPU_INFO = Path("/proc/cpuinfo")
# On the CPU, compile 'auto' compiles the steps of runs this long or longer. Measured on a 2-core AVX-512 machine: the
# compilation takes 60-100 s (a cold inductor cache) and saves 0.01-0.02 s of digits' 0.2 s per iteration, 0.4 s of
# 2.4 s at CIFAR shapes; the paper's runs (50,000 and 80,000 iterations) win, a short try would mostly wait.
COMPILE_FROM_ITERATIONS = 5000


@functools.cache
def native_bf16_flag() -> str | None:
    """The flag that says this CPU computes in bfloat16 natively, as the kernel reports its features in /proc/cpuinfo
    (x86-64 'flags', Arm 'Features'); None where there is none, or where the features cannot be read: never guessed."""
    try:
        text = CPU_INFO.read_text()
    except OSError:
        return None
    features = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            features.update(value.split())
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in features), None)


def default_amp(device: torch.device) -> str:
    """What amp 'auto' means on `device`: bf16 on GPUs that support it and on CPUs with native bf16 instructions,
    off (float32) elsewhere."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    return "bf16" if native_bf16_flag() else "off"


def amp_reason(device: torch.device) -> str:
    """Why amp 'auto' chose what it chose on `device`, for the run's header."""
    if device.type == "cuda":
        return "this GPU supports bf16" if default_amp(device) == "bf16" else "this GPU has no bf16"
    flag = native_bf16_flag()
    return f"this CPU has {flag}" if flag else "this CPU has no native bf16 (avx512_bf16, amx_bf16 or Arm bf16)"


def default_compile(device: torch.device, iterations: int | None) -> str:
    """What compile 'auto' means: off on CUDA (eager steps in CUDA graphs; compiled ones not measured there yet); on
    the CPU, mode default for runs of COMPILE_FROM_ITERATIONS iterations or more (or of a length not known), off for
    shorter runs, which would spend longer compiling than the compiled steps save."""
    if device.type == "cuda":
        return "off"
    return "default" if iterations is None or iterations >= COMPILE_FROM_ITERATIONS else "off"


def compile_reason(device: torch.device, iterations: int | None) -> str:
    """Why compile 'auto' chose what it chose, for the run's header."""
    if device.type == "cuda":
        return "eager steps in CUDA graphs on a GPU"
    if default_compile(device, iterations) == "off":
        return f"{iterations} iterations, fewer than the {COMPILE_FROM_ITERATIONS} a compilation pays off in"
    return f"a run of {COMPILE_FROM_ITERATIONS} iterations or more"


def check_cuda_graphs(amp: str, device: torch.device, compile: str = "off") -> None:
    """CUDA graphs replay captured GPU work: they need a CUDA device and a step without host decisions."""
    if compile in COMPILE_MODES_WITH_GRAPHS:
        raise ValueError(f"compile mode {compile} captures CUDA graphs of its own, which cannot run inside this "
                         "trainer's: use compile max-autotune-no-cudagraphs (--compile max-autotune-no-cudagraphs) "
                         "with them, or set cuda_graphs off (--no-cuda-graphs)")
    if device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device: set cuda_graphs off (--no-cuda-graphs) on the CPU")
    if amp == "fp16":
        raise ValueError("CUDA graphs cannot replay fp16 training (its loss scaler checks for overflow on the host "
                         "after each step): use amp bf16 (--amp bf16), or set cuda_graphs off (--no-cuda-graphs)")
