"""One zero-shot run from the command line's settings: builds the data set and the networks by name, finds (or
pretrains) the teacher, and calls distill, the one training path, with a run folder.

Run folder: see zskt_fast.engine.distill; config.json holds the resolved TrainConfig.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from ..data import dataset_info, evaluation_loader
from ..models import Generator, build_classifier, pair_networks
from .checkpoint import CheckpointError, load_file, load_into, recorded_normalisation
from .config import PretrainConfig, TrainConfig
from .distill import RunFolderError, RunInterrupted, check_run_folder, distill

__all__ = ["RunFolderError", "RunInterrupted", "check_run", "check_run_folder", "find_teacher", "train"]
from .teachers import default_teacher_path, pretrain_teacher


def find_teacher(config: TrainConfig) -> tuple[str, bool]:
    """(the teacher file, whether it must be pretrained first): the config's teacher_ckpt, else the cached pretrained
    one. For digits a missing cache entry is pretrained (seconds); for CIFAR-10 and SVHN it is an error that says how
    to make one."""
    if config.teacher_ckpt:
        if not os.path.isfile(config.teacher_ckpt):
            raise CheckpointError(f"teacher checkpoint not found: {config.teacher_ckpt}")
        return config.teacher_ckpt, False
    cached = default_teacher_path(config.dataset, config.teacher)
    if cached.is_file():
        return str(cached), False
    if config.dataset != "digits":
        raise CheckpointError(
            f"no teacher checkpoint: give a teacher file (teacher_ckpt, --teacher-ckpt PATH; the authors' released "
            f"last.pth.tar files load as they are), or train one with `python -m zskt_fast.pretrain --dataset "
            f"{config.dataset} --arch {config.teacher}`, which writes {cached}, where the trainer looks")
    return str(cached), True


def pretrain_cached_teacher(config: TrainConfig, path: str, progress: bool) -> None:
    print(f"pretraining the {config.teacher} teacher on digits (first use; cached at {path})")
    result = pretrain_teacher(PretrainConfig(dataset="digits", arch=config.teacher, device=config.device), path,
                              progress=progress)
    print(f"teacher test accuracy {result['test_acc']:.2f}% ({result['seconds']:.0f} s)")


def _networks(config: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    return (build_classifier(config.teacher, config.num_classes, config.channels),
            build_classifier(config.student, config.num_classes, config.channels))


def _image_shape(config: TrainConfig) -> tuple[int, int, int]:
    return config.channels, config.image_size, config.image_size


def _check_networks(config: TrainConfig, teacher_file: tuple[str, dict] | None) -> None:
    """The architectures exist and pair, and the teacher file fits, before anything is created or pretrained (the
    global random state is left as it was: the networks of the run are built from the seed later)."""
    with torch.random.fork_rng(devices=[]):
        teacher, student = _networks(config)
        Generator(config.z_dim, config.image_size, config.channels)
        if teacher_file is not None:
            load_into(teacher, teacher_file[1], teacher_file[0], "teacher")
        pair_networks(teacher, student, image_shape=_image_shape(config), attention=config.attention_layers,
                      use_attention=config.beta > 0)


def _read_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: no config.json there; give the seedN folder of a run, or "
                              f"the folder holding its seedN folders")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    return TrainConfig.from_dict(values, source=str(path))


@dataclasses.dataclass
class _Checked:
    config: TrainConfig
    loader: object
    teacher_path: str
    pretrain_first: bool
    teacher_file: tuple[str, dict] | None


def check_run(config: TrainConfig) -> _Checked:
    """Every check that needs no run folder: the settings, the data set, the architectures and their pairing, the
    teacher file (read once, kept for the run). Nothing is created or pretrained."""
    config = config.resolved()
    try:
        teacher_path, pretrain_first = find_teacher(config)
    except CheckpointError:
        _loader(config, None)  # the more basic error
        raise
    teacher_file = None if pretrain_first else (teacher_path, load_file(teacher_path))
    if config.mean is None:  # the normalisation the teacher was trained with, as its file records it
        recorded = recorded_normalisation(teacher_file[1]) if teacher_file else None
        info = dataset_info(config.dataset, image_size=config.image_size, channels=config.channels)
        mean, std = recorded or (info.mean, info.std)
        config.mean, config.std = list(mean), list(std)
    loader = _loader(config, (config.mean, config.std))
    _check_networks(config, teacher_file)
    return _Checked(config, loader, teacher_path, pretrain_first, teacher_file)


def _loader(config: TrainConfig, normalisation):
    return evaluation_loader(config.dataset, root=config.data_root, download=config.download,
                             normalisation=normalisation, image_size=config.image_size, channels=config.channels)


def train(config: TrainConfig | None, run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, stop: int | None = None, distributed: bool | None = False) -> dict:
    """Runs (or, with `resume`, continues from its checkpoint) one seed of zero-shot knowledge transfer into
    `run_dir`; returns the summary. A folder that holds another run is refused unless `overwrite`; with `resume`
    the run's saved config.json applies and `config` is not used.

    SIGINT/SIGTERM stop the run after the iteration in progress, with a checkpoint, by raising RunInterrupted.
    `stop` ends the run after that many iterations of the schedule (as if it were killed there), for tests.
    `distributed`: as distill's (data-parallel over the process group; by default not)."""
    run_dir = Path(run_dir).expanduser().absolute()
    if resume:
        config = _read_run_config(run_dir)
    # Everything that can be checked is checked before the run folder is touched or a teacher pretrained.
    checked = check_run(config)
    config = checked.config
    if not resume:
        check_run_folder(run_dir, overwrite=overwrite, create=False)
    if checked.pretrain_first:
        pretrain_cached_teacher(config, checked.teacher_path, progress)
    teacher_file = checked.teacher_file or (checked.teacher_path, load_file(checked.teacher_path))
    config.teacher_ckpt = checked.teacher_path
    torch.manual_seed(config.seed)
    teacher, student = _networks(config)
    load_into(teacher, teacher_file[1], config.teacher_ckpt, "teacher")
    result = distill(teacher, student, image_shape=_image_shape(config), num_classes=config.num_classes,
                     attention=config.attention_layers, test_data=checked.loader, out=run_dir,
                     normalisation=(config.mean, config.std), resume=resume, overwrite=overwrite, progress=progress,
                     run_record=config.to_dict(), distributed=distributed, stop=stop, **config.loop_settings())
    return {"stopped_at": result.stopped_at} if result.stopped_at is not None else result.summary
