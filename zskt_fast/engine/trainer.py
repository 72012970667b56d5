"""One zero-shot run from the command line's settings: builds the data set and the networks by name, finds (or
pretrains) the teacher, and calls distill, the one training path, with a run folder.

Run folder: see zskt_fast.engine.distill; config.json holds the resolved TrainConfig.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import dataset_info, evaluation_loader
from ..models import build_classifier, pair_networks
from .lifecycle.checkpoint import CheckpointError, load_file, load_into, recorded_normalisation
from .settings.config import TrainConfig
from .distill import RUN_FILES, distill_resolved
from .lifecycle.reporter import Callback
from .methods.objectives import StudentLoss, check_teacher_for
from .methods.registry import METHODS
from .lifecycle.run import check_run_folder
from .teachers import find_teacher, pretrain_missing_teacher


@dataclasses.dataclass
class PreparedRun:
    """A configuration checked against everything it names: resolved settings (with the normalisation the teacher was
    trained with), the test batches, and the teacher file (read, or to be pretrained first)."""
    config: TrainConfig
    test_batches: object
    teacher_path: str
    teacher_file: dict | None  # None: the cached digits teacher is missing and is pretrained before the run


def prepare_run(config: TrainConfig) -> PreparedRun:
    """Every check that needs no run folder: the settings, the data set, the architectures and their pairing, the
    teacher file (read once, kept for the run). Nothing is created or pretrained."""
    config = config.resolved()
    data, networks = config.data, config.networks
    try:
        teacher_path, must_pretrain = find_teacher(data, networks)
    except CheckpointError:
        _test_batches(config)  # a missing data set is the more basic error
        raise
    teacher_file = None if must_pretrain else load_file(teacher_path)
    if data.mean is None:  # the normalisation the teacher was trained with, as its file records it
        info = dataset_info(data.dataset, image_size=data.image_size, channels=data.channels)
        mean, std = (recorded_normalisation(teacher_file) if teacher_file else None) or (info.mean, info.std)
        data.mean, data.std = list(mean), list(std)
    test_batches = _test_batches(config)
    with torch.random.fork_rng(devices=[]):  # the run's networks are built from its seed later
        teacher, student = _networks(config)
        METHODS[config.objectives.method].strategy.make_generator(config, data.image_shape, networks.num_classes)
        if teacher_file is not None:
            load_into(teacher, teacher_file, teacher_path, "teacher")
        reads_features = StudentLoss(config.objectives, config.steps).reads_features
        teacher, _, _ = pair_networks(teacher, student, image_shape=data.image_shape,
                                      attention=networks.attention_layers, use_attention=reads_features)
        check_teacher_for(config.objectives, teacher, f"the {networks.teacher} teacher")
    return PreparedRun(config, test_batches, teacher_path, teacher_file)


def train(config: TrainConfig | None, run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, distributed: bool | None = False, callbacks: Sequence[Callback] = ()) -> dict:
    """Runs (or, with `resume`, continues from its checkpoint) one seed of zero-shot knowledge transfer into
    `run_dir`; returns its summary. A folder that holds another run is refused unless `overwrite`; with `resume`
    the run's saved config.json applies and `config` is not used. `distributed` and `callbacks`: as distill's.

    SIGINT/SIGTERM stop the run after the iteration in progress, with a checkpoint, by raising RunInterrupted."""
    run_dir = Path(run_dir).expanduser().absolute()
    prepared = prepare_run(read_run_config(run_dir) if resume else config)
    config = prepared.config
    if not resume:
        check_run_folder(run_dir, RUN_FILES, overwrite=overwrite, create=False)
    teacher_file = prepared.teacher_file
    if teacher_file is None:
        pretrain_missing_teacher(config.networks, config.run, prepared.teacher_path, progress)
        teacher_file = load_file(prepared.teacher_path)
    config.networks.teacher_ckpt = prepared.teacher_path
    torch.manual_seed(config.run.seed)
    teacher, student = _networks(config)
    load_into(teacher, teacher_file, prepared.teacher_path, "teacher")
    result = distill_resolved(config.zero_shot(), teacher, student, image_shape=config.data.image_shape,
                              num_classes=config.networks.num_classes, attention=config.networks.attention_layers,
                              test_data=prepared.test_batches, out=run_dir,
                              normalisation=(config.data.mean, config.data.std), resume=resume, overwrite=overwrite,
                              progress=progress, run_record=config.to_dict(), distributed=distributed,
                              callbacks=callbacks)
    return result.summary


def read_run_config(run_dir: Path) -> TrainConfig:
    """The settings a run folder's config.json holds."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: no config.json there; give the seedN folder of a run, or "
                              f"the folder holding its seedN folders")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    return TrainConfig.from_dict(values, source=str(path))


def _networks(config: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    classes, channels = config.networks.num_classes, config.data.channels
    return (build_classifier(config.networks.teacher, classes, channels),
            build_classifier(config.networks.student, classes, channels))


def _test_batches(config: TrainConfig):
    data = config.data
    normalisation = (data.mean, data.std) if data.mean is not None else None
    return evaluation_loader(data.dataset, root=data.data_root, download=data.download, normalisation=normalisation,
                             image_size=data.image_size, channels=data.channels)
