"""Helpers every layer of the package uses: argument checks of plain values, the device behind "auto", running
networks in eval mode, settings fields that carry their command-line help, output folders checked before use, files
written atomically, and failures of the storage recognised wherever they are chained.
Only torch is imported here, so kernels, ops, models, data, engine and programs can all use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import tempfile
import typing
from collections.abc import Callable, Iterator, Sequence
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


# The failures of the storage itself (not of the program): a file that cannot be written for one of these reasons
# would fail again on a retry until the user frees space or remounts.
STORAGE_FAILURES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                    errno.EROFS: "read-only file system"}


class StorageError(Exception):
    """A file could not be written because the disk is full, over quota or read-only; the message names the file and
    says whether the previous version of it is intact."""


def storage_failure(error: BaseException | None) -> BaseException | None:
    """The StorageError, or the OSError of STORAGE_FAILURES, that caused `error` (itself or anything chained to it as
    cause or context: torch.save's zip writer, for one, raises a RuntimeError over the ENOSPC of the file's write);
    None when the storage is not to blame."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, StorageError) or (isinstance(error, OSError) and error.errno in STORAGE_FAILURES):
            return error
        error = error.__cause__ or error.__context__
    return None


def _open_for_writing(handle: int):
    """The binary file object over a new temporary file's descriptor (one place, so that tests can make it fail)."""
    return os.fdopen(handle, "wb")


def atomic_write(path: str | os.PathLike, write: Callable[[typing.BinaryIO], object]) -> None:
    """Calls `write(file)` on a temporary file beside `path`, flushes it to disk, then renames it over `path`: a reader
    (or a program killed while writing) sees the old file or the new one, never half of one, and a failed write
    leaves no temporary file. A full, over-quota or read-only disk raises StorageError naming the file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the final file gets the usual permissions
        with _open_for_writing(handle) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        failure = storage_failure(error)
        if isinstance(failure, OSError):
            kept = " (the previous file there is intact)" if os.path.exists(path) else ""
            raise StorageError(f"cannot write {path}: {STORAGE_FAILURES[failure.errno]}{kept}") from error
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` as UTF-8 into `path`, atomically (see atomic_write)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# What a program writes before its work begins: a refused start may remove these (and empty files and folders).
START_FILES = ("run.json", "config.json", ".lock")


def _tree(folder: Path) -> set[Path]:
    if not folder.is_dir():
        return set()
    return {folder, *folder.rglob("*")}


@contextlib.contextmanager
def left_as_found(folder: str | os.PathLike | None, *, enabled: bool = True,
                  keep_on: tuple[type[BaseException], ...] = (KeyboardInterrupt,)) -> Iterator[None]:
    """When the block fails (but not by one of `keep_on`) having created in `folder` nothing but START_FILES, empty
    files and folders, those are removed again: a refused start leaves the output folder as it found it. Anything
    that existed before, and anything else the block made (a checkpoint, a finished run's files), is kept."""
    if folder is None or not enabled:
        yield
        return
    folder = Path(folder).expanduser().absolute()
    before = _tree(folder)
    try:
        yield
    except BaseException as error:
        if not isinstance(error, keep_on):
            _remove_start_files(folder, before)
        raise


def _remove_start_files(folder: Path, before: set[Path]) -> None:
    made = _tree(folder) - before
    files = [p for p in made if not p.is_dir()]
    if any(p.name not in START_FILES and p.stat().st_size > 0 for p in files if p.exists()):
        return  # work was saved: keep everything
    for path in files:
        path.unlink(missing_ok=True)
    for path in sorted((p for p in made if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # another process (a rank of the same job) may be doing the same
            path.rmdir()
