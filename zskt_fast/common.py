"""Helpers every layer of the package uses: argument checks of plain values, the device behind "auto", running
networks in eval mode, settings fields that carry their command-line help, and output folders checked before use.
Only torch is imported here, so kernels, ops, models, data, engine and programs can all use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

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
    `cli` holds argparse keywords (choices=...) and the option's help group (group=...). A list default is copied
    for each instance."""
    metadata = {"help": help, **cli}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_default(field: dataclasses.Field):
    """A dataclass field's default value, made by its factory where it has one."""
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def writable_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Creates `path` (and its parents) when missing and checks that files can be written in it, before any work is
    done for it; raises ValueError naming the path and the reason."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"{what} {folder} cannot be written: {error.strerror or error}") from error
    return folder


def settings_from_dict(settings_class, values: dict, source: str):
    """The dataclass `settings_class` from a dict read from a file (`source`, named in errors): unknown keys are
    ignored, every known one must have its field's type (an int where a float is expected is fine)."""
    hints = typing.get_type_hints(settings_class)
    kept = {}
    for field in dataclasses.fields(settings_class):
        if field.name not in values:
            continue
        value, annotation = values[field.name], hints[field.name]
        allowed = typing.get_args(annotation) if typing.get_args(annotation) else (annotation,)
        allowed = tuple(type(None) if a is None else typing.get_origin(a) or a for a in allowed)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        ok = ok or (float in allowed and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
            raise ValueError(f"{source}: {field.name} must be {names}, got {value!r}")
        kept[field.name] = value
    return settings_class(**kept)
