"""How the steps run fast: mixed precision (and whether this CPU computes in bfloat16 natively), torch.compile modes,
and what CUDA graphs need."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from ...models import strided_convolutions_on_small_maps

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


def autocast(device: torch.device, amp: str, *, float16: bool = True):
    """The steps' autocast for an amp setting ('off', 'bf16', 'fp16'); `float16` False: fp16 runs this part in
    float32 (a step without a loss scaler)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None or (dtype == torch.float16 and not float16):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=False)


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


def compile_reason(device: torch.device, iterations: int | None, unit: str = "iterations") -> str:
    """Why compile 'auto' chose what it chose, for the run's header (`unit`: what `iterations` counts; the pool
    methods count their student steps, the part they compile)."""
    if device.type == "cuda":
        return "eager steps in CUDA graphs on a GPU" if unit == "iterations" else "eager steps on a GPU"
    if default_compile(device, iterations) == "off":
        return f"{iterations} {unit}, fewer than the {COMPILE_FROM_ITERATIONS} a compilation pays off in"
    return f"a run of {COMPILE_FROM_ITERATIONS} {unit} or more"


def _bf16_weight_gradient_is_sound(conv: torch.nn.Conv2d, input_shape) -> bool:
    """Whether the CPU's bf16 weight gradient of `conv` on inputs of `input_shape` stays near float32's, tried four
    times after memory is filled with NaN and freed (what the faulty kernels then read)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *input_shape, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = conv.weight.detach().float().cpu().contiguous(memory_format=torch.channels_last)

    def gradient(dtype):
        w = weight.to(dtype).requires_grad_()
        y = torch.nn.functional.conv2d(x.to(dtype), w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        return torch.autograd.grad(y, w, torch.ones_like(y))[0].float()

    expected = gradient(torch.float32)
    sizes = {weight.numel(), 2 * weight.numel(), x.numel(), 1 << 12, 1 << 16, 1 << 20}
    for _ in range(4):
        for size in sorted(sizes):  # freed NaN blocks of the sizes the kernel's buffers take, for it to be handed
            for dtype in (torch.bfloat16, torch.float32):
                poison = torch.full((size,), float("nan"), dtype=dtype)
                del poison
        got = gradient(torch.bfloat16)
        if not torch.isfinite(got).all() or (got - expected).abs().max() > 0.05 * expected.abs().max() + 0.05:
            return False
    return True


def check_cpu_bf16_training(student: torch.nn.Module, image_shape, amp: str, device: torch.device) -> None:
    """PyTorch's bf16 convolution weight gradient on the CPU (oneDNN; seen with torch 2.11 and 2.14) reads
    uninitialised memory for some strided convolutions on maps of one or two pixels (a 3x3 stride-2 convolution on a
    1x1 map): the student's gradients then hold garbage or NaN, and runs differ. The student's strided convolutions on
    small maps are tried before training in bf16 on the CPU, and a student with a faulty one is refused."""
    if amp != "bf16" or device.type != "cpu":
        return
    faulty = [f"{name} (input {'x'.join(map(str, shape[1:]))})"
              for name, conv, shape in strided_convolutions_on_small_maps(student, image_shape)
              if not _bf16_weight_gradient_is_sound(conv, shape)]
    if faulty:
        raise ValueError(f"amp bf16 on the CPU cannot train this student on {'x'.join(map(str, image_shape))} images: "
                         f"PyTorch's bf16 weight gradient of its convolution(s) {', '.join(faulty[:3])} is wrong "
                         "here (it reads uninitialised memory). Use amp off (--amp off), or larger images")


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
