"""How the steps run fast: mixed precision, torch.compile modes, and what CUDA graphs need."""
from __future__ import annotations

import torch

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile modes; those that capture CUDA graphs of their own cannot run inside ours.
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
COMPILE_CHOICES = ("auto",) + COMPILE_MODES
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")


def default_amp(device: torch.device) -> str:
    """What amp 'auto' means on `device`: bf16 on GPUs that support it, off elsewhere."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"


def amp_reason(device: torch.device) -> str:
    """Why amp 'auto' chose what it chose on `device`, for the run's header."""
    if device.type == "cuda":
        return "this GPU supports bf16" if default_amp(device) == "bf16" else "this GPU has no bf16"
    return "fp32 on the CPU"


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
