"""Helpers every layer of the package uses: argument checks of plain values, the device behind "auto", running
networks in eval mode, and settings fields that carry their command-line help. Only torch is imported here, so
kernels, ops, models, data, engine and programs can all use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_positive(value, name: str) -> None:
    """A finite number > 0 (a learning rate, a temperature, a step size)."""
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(value, name: str) -> None:
    """A finite number >= 0 (beta, a weight decay)."""
    if not _is_number(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_count(value, name: str, minimum: int = 1, maximum: int | None = None) -> None:
    """An integer in [minimum, maximum] (iterations, batch sizes, numbers of images or steps)."""
    is_int = not isinstance(value, bool) and isinstance(value, int)
    if maximum is not None and (not is_int or not minimum <= value <= maximum):
        raise ValueError(f"{name} must be an integer between {minimum} and {maximum}, got {value!r}")
    if not is_int or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(value, choices: Sequence[str], name: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' is CUDA when present, else the CPU; 'cpu', 'cuda' and 'cuda:N' are checked against this machine."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s)")
    return resolved


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels accumulate, and return losses, in float32; float64 inputs stay in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def eval_mode(*nets: nn.Module) -> Iterator[None]:
    """Puts the networks in eval mode for the block (BatchNorm statistics untouched) and restores each one's mode."""
    modes = [net.training for net in nets]
    try:
        for net in nets:
            net.eval()
        yield
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)


def option(default, help: str, **cli):
    """A dataclass field holding a setting's default and the help text of the command-line option made from it;
    `cli` holds argparse keywords (choices=...) and the option's help group (group=...)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})
