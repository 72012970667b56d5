"""Teachers: where pretrained ones are cached, and pretraining one with the standard recipe."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data import dataset_info, evaluation_loader, load_dataset
from ..models import build_classifier
from .checkpoint import save_classifier
from .config import PretrainConfig
from .supervised import train_classifier


def cache_dir() -> Path:
    """$ZSKT_FAST_CACHE, else $XDG_CACHE_HOME/zskt_fast, else ~/.cache/zskt_fast."""
    if os.environ.get("ZSKT_FAST_CACHE"):
        return Path(os.environ["ZSKT_FAST_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "zskt_fast"


def default_teacher_path(dataset: str, arch: str) -> Path:
    return cache_dir() / "teachers" / f"{dataset}-{arch.lower().replace(':', '-')}.pt"


def pretrain_teacher(config: PretrainConfig, out: str | os.PathLike, *, progress: bool = True) -> dict:
    """Trains `config.arch` on `config.dataset` with SGD and writes a checkpoint that the trainer loads; returns its
    metadata."""
    config = config.resolved()
    shape = {"image_size": config.image_size, "channels": config.channels}
    info = dataset_info(config.dataset, root=config.data_root, **shape)
    mean, std = info.mean, info.std
    train_set = load_dataset(config.dataset, train=True, root=config.data_root, download=config.download,
                             augment=True, **shape)
    loader = evaluation_loader(config.dataset, root=config.data_root, download=config.download, **shape)
    torch.manual_seed(config.seed)
    net = build_classifier(config.arch, info.num_classes, info.channels)
    result = train_classifier(net, train_set, loader, config, device=config.device, progress=progress)
    metadata = {"arch": config.arch, "dataset": config.dataset, "test_acc": result["test_acc"],
                "image_size": info.image_size, "channels": info.channels,
                "epochs": config.epochs, "seed": config.seed,
                "normalisation": {"mean": list(mean), "std": list(std)},
                "recipe": f"SGD nesterov lr {config.lr} wd {config.weight_decay} {config.schedule}, batch "
                          f"{config.batch_size}, augmentation {info.augmentation}"}
    save_classifier(net, out, **metadata)
    return {**metadata, "seconds": result["seconds"], "path": os.fspath(out)}
