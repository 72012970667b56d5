"""The trainer's settings: one dataclass, the spec's table as defaults, resolved per data set and device."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..data import DATASETS
from ..ops import BACKENDS
from .steps import StepSettings

# Per data set: (teacher, student, iterations, evaluate every, log every). CIFAR-10 and SVHN follow the authors' runs;
# digits is the offline default, sized to finish on a 2-core CPU within minutes.
DATASET_DEFAULTS = {
    "cifar10": ("wrn-40-2", "wrn-16-1", 80_000, 1000, 100),
    "svhn": ("wrn-40-2", "wrn-16-1", 50_000, 1000, 100),
    "digits": ("wrn-16-2", "wrn-16-1", 800, 100, 10),
}
AMP_CHOICES = ("auto", "off", "bf16", "fp16")


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    teacher: str | None = None          # architecture name; None: the data set's default
    student: str | None = None
    teacher_ckpt: str | None = None     # None: the cached pretrained teacher (trained on first use for digits)
    iterations: int | None = None
    n_generator_steps: int = 1
    n_student_steps: int = 10
    batch_size: int = 128
    z_dim: int = 100
    generator_lr: float = 1e-3
    student_lr: float = 2e-3
    beta: float = 250.0
    temperature: float = 1.0
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    cuda_graphs: bool | None = None     # None: on for CUDA devices
    channels_last: bool | None = None   # None: on for CUDA devices
    backend: str = "auto"
    eval_every: int | None = None
    log_every: int | None = None
    checkpoint_minutes: float = 5.0
    checkpoint_every: int = 0           # also every this many iterations (0: by time only)
    tensorboard: bool = True            # when the tensorboard package is installed

    def resolved(self) -> TrainConfig:
        """A copy with every None/auto filled in for this data set and machine; raises ValueError on bad values."""
        c = dataclasses.replace(self)
        if c.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {c.dataset!r}: expected one of {', '.join(DATASETS)}")
        teacher, student, iterations, eval_every, log_every = DATASET_DEFAULTS[c.dataset]
        c.teacher = (c.teacher or teacher).lower()
        c.student = (c.student or student).lower()
        c.iterations = iterations if c.iterations is None else c.iterations
        c.eval_every = min(eval_every, c.iterations) if c.eval_every is None else c.eval_every
        c.log_every = log_every if c.log_every is None else c.log_every
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(c.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {c.device!r} asked for, but CUDA is not available on this machine")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {c.device!r}")
        on_gpu = device.type == "cuda"
        if c.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {c.amp!r}")
        if c.amp == "auto":
            c.amp = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "off"
        if c.cuda_graphs is None:
            c.cuda_graphs = on_gpu and c.amp != "fp16"
        if c.cuda_graphs and not on_gpu:
            raise ValueError("CUDA graphs need a CUDA device; use --no-cuda-graphs on the CPU")
        if c.cuda_graphs and c.amp == "fp16":
            raise ValueError("CUDA graphs cannot replay fp16 training (its loss scaler checks for overflow on the host "
                             "after each step): use --amp bf16 or --no-cuda-graphs")
        if c.channels_last is None:
            c.channels_last = on_gpu
        if c.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {c.backend!r}")
        for name in ("iterations", "n_generator_steps", "n_student_steps", "batch_size", "z_dim", "eval_every",
                     "log_every"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        for name in ("generator_lr", "student_lr", "temperature", "grad_clip", "checkpoint_minutes"):
            value = getattr(c, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be a number > 0, got {value!r}")
        if not isinstance(c.beta, (int, float)) or not math.isfinite(c.beta) or c.beta < 0:
            raise ValueError(f"beta must be a number >= 0, got {c.beta!r}")
        if c.checkpoint_every < 0:
            raise ValueError(f"checkpoint-every must be >= 0, got {c.checkpoint_every}")
        return c

    def step_settings(self) -> StepSettings:
        """The settings of the training steps, taken from the fields of the same names."""
        return StepSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(StepSettings)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
