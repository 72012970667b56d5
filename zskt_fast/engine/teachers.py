"""Where a run's teacher comes from: the file given, else the cache of pretrained teachers (filled on first use for
digits)."""
from __future__ import annotations

import os
from pathlib import Path

from .lifecycle.checkpoint import CheckpointError
from .settings.config import PretrainConfig
from .settings.parts import DataSettings, NetworkSettings, RunSettings
from .experiments.supervised import train_supervised


def cache_dir() -> Path:
    """$ZSKT_FAST_CACHE, else $XDG_CACHE_HOME/zskt_fast, else ~/.cache/zskt_fast."""
    if os.environ.get("ZSKT_FAST_CACHE"):
        return Path(os.environ["ZSKT_FAST_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "zskt_fast"


def default_teacher_path(dataset: str, arch: str) -> Path:
    return cache_dir() / "teachers" / f"{dataset}-{arch.lower().replace(':', '-')}.pt"


def find_teacher(data: DataSettings, networks: NetworkSettings) -> tuple[str, bool]:
    """(the teacher file, whether it must be pretrained first): the teacher_ckpt given, else the cached pretrained
    one. For digits a missing cache entry is pretrained (seconds); for the other data sets it is an error that says
    how to make one."""
    if networks.teacher_ckpt:
        if not os.path.isfile(networks.teacher_ckpt):
            raise CheckpointError(f"teacher checkpoint not found: {networks.teacher_ckpt}")
        return networks.teacher_ckpt, False
    cached = default_teacher_path(data.dataset, networks.teacher)
    if cached.is_file():
        return str(cached), False
    if data.dataset != "digits":
        raise CheckpointError(
            f"no teacher checkpoint: give a teacher file (teacher_ckpt, --teacher-ckpt PATH; the authors' released "
            f"last.pth.tar files load as they are), or train one with `python -m zskt_fast.pretrain --dataset "
            f"{data.dataset} --arch {networks.teacher}`, which writes {cached}, where the trainer looks")
    return str(cached), True


def pretrain_missing_teacher(networks: NetworkSettings, run: RunSettings, path: str, progress: bool) -> None:
    """Trains the digits teacher the cache lacks, into `path`."""
    print(f"pretraining the {networks.teacher} teacher on digits (first use; cached at {path})")
    config = PretrainConfig.from_flat({"dataset": "digits", "arch": networks.teacher, "device": run.device})
    result = train_supervised(config, path, progress=progress)
    print(f"teacher test accuracy {result['test_acc']:.2f}% ({result['seconds']:.0f} s)")
