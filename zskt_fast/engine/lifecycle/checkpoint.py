"""Checkpoint files: written atomically, read without executing arbitrary pickled code, checked for NaN.

A classifier file can be any of: the released teachers' dict whose `state_dict` entry holds the weights, the files this
package writes (the same layout plus metadata), or a plain state dict.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

from ...common import atomic_write
from ...models import Generator, LabelGenerator, build_classifier


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, holds non-finite values or does not fit the network."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically (zskt_fast.common.atomic_write): a reader, or a run killed while writing, sees the old
    file or the new one; a full or read-only disk raises StorageError and keeps the old one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_file(path: str | os.PathLike, map_location="cpu"):
    """torch.load with weights_only=True (argparse namespaces, which the released teachers carry, are allowed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling and format errors have many types
        lines = str(error).strip().splitlines()
        message = f"cannot read checkpoint {path}: {type(error).__name__}" + (f": {lines[0]}" if lines else "")
        if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
            message += (". It holds Python objects besides tensors: re-save just its weights with "
                        "torch.save(checkpoint['state_dict'], path)")
        else:
            message += " (not a complete PyTorch file: truncated, or of another format)"
        raise CheckpointError(message) from error


def check_finite(state: Mapping[str, torch.Tensor], source: str, hint: str = "") -> None:
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values{hint}")


def check_finite_weights(state: Mapping, source: str, part: str = "") -> None:
    """Every tensor of every state dict nested in `state` is finite; the error names the state dict by its key."""
    if any(isinstance(v, torch.Tensor) for v in state.values()):
        check_finite(state, f"{source} ({part})" if part else source)
    for key, value in state.items():
        if isinstance(value, Mapping):
            check_finite_weights(value, source, str(key))


# Where a classifier's weights sit in a file: ours and the authors' teachers ('state_dict'), the authors' zero-shot
# runs ('student_state_dict'), other trainers ('model').
CLASSIFIER_KEYS = ("state_dict", "student_state_dict", "model")


def _strip_prefix(state: Mapping, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj, source: str, keys: tuple[str, ...] = CLASSIFIER_KEYS) -> dict[str, torch.Tensor]:
    """The weights inside a loaded file (the first of `keys` that holds a state dict, else the file itself), with
    any DataParallel `module.` prefix removed."""
    if isinstance(obj, Mapping):
        for key in keys:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        found = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source} holds no weights where they are looked for: a state dict, or a dict with "
                              f"one of {', '.join(map(repr, keys))}; it holds {found or 'nothing'}")
    return _strip_prefix(obj, "module.")


def authors_generator_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' generator parameter names mapped to ours: their zero-shot runs save the generator inside a loader
    ('generator.' prefix), as one nn.Sequential 'layers': layers.0 (the linear projection) is our `project`, and
    layers.k for k >= 2 is our `body.(k-2)` (layers.1 is the reshape, which has no parameters)."""
    state = _strip_prefix(state, "generator.")
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "layers" and len(parts) > 2 and parts[1].isdigit():
            index = int(parts[1])
            key = ".".join(["project"] + parts[2:]) if index == 0 else ".".join(["body", str(index - 2)] + parts[2:])
        mapped[key] = value
    return mapped


def load_generator(path: str | os.PathLike, generator: nn.Module | None = None) -> nn.Module:
    """A generator from a file: this package's generator.pt, or the authors' zero-shot run file (last.pth.tar, its
    'generator_state_dict', their parameter names mapped to ours). Without `generator`, one is built to fit the
    weights (noise size, image size and channels read from them). Raises CheckpointError listing the first missing,
    unexpected and mis-shaped keys when the file does not fit."""
    path = os.fspath(path)
    obj = load_file(path)
    state = extract_state_dict(obj, path, keys=("generator_state_dict", "state_dict"))
    if any(k.startswith(("layers.", "generator.layers.")) for k in state):
        state = authors_generator_state(state)
    if generator is None and isinstance(obj, Mapping) and obj.get("kind") == "label":
        generator = _label_generator(obj, state, path)
    if generator is None:
        project, last_conv = state.get("project.weight"), state.get("body.9.weight")
        if project is None or last_conv is None:
            raise CheckpointError(f"{path} holds no generator of the paper's shape (no project.weight / "
                                  f"body.9.weight among {_first(state)})")
        side = int(round((project.shape[0] / 128) ** 0.5))
        # The paper's generator ends in an affine BatchNorm (body.10), the frameworks' in a sigmoid (no weights).
        output = obj.get("output") if isinstance(obj, Mapping) and "output" in obj else \
            "batchnorm" if "body.10.weight" in state else "sigmoid"
        generator = Generator(z_dim=project.shape[1], image_size=4 * side, channels=last_conv.shape[0], output=output)
    load_into(generator, state, path, "generator")
    return generator


def _label_generator(obj: Mapping, state: dict, path: str) -> LabelGenerator:
    """NAYER's generator of a generator.pt: its layout, the embedding among its weights."""
    try:
        return LabelGenerator(state["embedding"], obj["image_size"], obj["channels"],
                              synthesis_batch=obj["synthesis_batch"], noisy_width=obj["noisy_width"], ngf=obj["ngf"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds a label generator whose layout cannot be read: {error}") from None


def save_generator(generator: nn.Module, path: str | os.PathLike) -> None:
    """generator.pt: the weights and what builds the network again (load_generator reads it with no network given)."""
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    check_finite(state, f"not writing {os.fspath(path)}")
    layout = generator.layout() if isinstance(generator, LabelGenerator) else \
        {"z_dim": generator.z_dim, "image_size": generator.image_size, "channels": generator.channels,
         "output": generator.output}
    atomic_save({"state_dict": state, **layout}, path)


def _first(items, n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "") if items else "none"


def load_weights(net: nn.Module, path: str | os.PathLike, *, what: str = "network") -> dict:
    """Loads a classifier file into `net` after checking that every key and shape fits; returns the whole file's dict
    (metadata included). Raises CheckpointError listing the first missing, unexpected and mismatched keys."""
    path = os.fspath(path)
    return load_into(net, load_file(path), path, what)


def load_into(net: nn.Module, obj, path: str, what: str) -> dict:
    """`load_weights` for a file already read with `load_file` (or the state dict taken from one)."""
    state = extract_state_dict(obj, path)
    check_finite(state, path, hint="; the file cannot be used: delete or replace it (a missing cached teacher is "
                                   "pretrained again)")
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        arch = getattr(net, "arch_name", type(net).__name__)
        raise CheckpointError(
            f"{path} does not fit the {what} ({arch}): missing keys: {_first(missing)}; unexpected keys: "
            f"{_first(unexpected)}; shape mismatches (file vs network): {_first(mismatched)}. Check the architecture "
            f"and the dataset (number of classes, input channels).")
    net.load_state_dict(state)
    return dict(obj) if isinstance(obj, Mapping) else {"state_dict": state}


def save_classifier(net: nn.Module, path: str | os.PathLike, **metadata) -> None:
    """The layout `load_weights` reads (and the released teachers use): {'state_dict': ..., **metadata}."""
    for key, value in metadata.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"metadata {key} is not finite: {value}")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    check_finite(state, f"not writing {os.fspath(path)}")
    atomic_save({"state_dict": state, **metadata}, path)


def recorded_normalisation(obj) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a classifier file records (this package's files do; the authors' do not), else None."""
    record = obj.get("normalisation") if isinstance(obj, Mapping) else None
    if isinstance(record, Mapping) and record.get("mean") is not None and record.get("std") is not None:
        return tuple(map(float, record["mean"])), tuple(map(float, record["std"]))
    return None


def load_classifier(path: str | os.PathLike, arch: str | None, *, num_classes: int, in_channels: int,
                    what: str = "network") -> nn.Module:
    """Builds the classifier a file holds and loads it. `arch` may be omitted for files that record theirs (those
    written by this package do); the authors' files do not. The normalisation the file records, if any, is kept as
    the network's `normalisation` attribute ((mean, std), else None)."""
    obj = load_file(path)
    recorded = obj.get("arch") if isinstance(obj, Mapping) else None
    arch = arch or recorded
    if not arch:
        raise CheckpointError(f"{path} does not record its architecture: name it (for example wrn-16-1)")
    net = build_classifier(arch, num_classes=num_classes, in_channels=in_channels)
    load_into(net, obj, os.fspath(path), what)
    net.normalisation = recorded_normalisation(obj)
    return net
