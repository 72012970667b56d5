"""zskt_fast.distill: zero-shot knowledge transfer from any teacher into any student (Algorithm 1 around given
networks). It is the one training path: the command line builds networks and data by name and calls it.

Run folder (when `out` is given): config.json (the settings), metrics.jsonl, checkpoint.pt (atomic, every few minutes
and at the end), images/iter_NNNNNN.png at each evaluation, student.pt and generator.pt, summary.json.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..common import eval_mode
from ..models import classifier_logits, pair_networks, unwrap
from .lifecycle.distributed import data_parallel_world, global_batch_norm
from .lifecycle.reporter import Callback
from .lifecycle.run import Run
from .lifecycle.speed import check_cpu_bf16_training
from .methods.objectives import StudentLoss, check_teacher_for
from .methods.registry import METHODS
from .methods.strategy import Assembly
from .settings.config import ZeroShotSettings

RUN_FILES = ("config.json", "checkpoint.pt", "metrics.jsonl", "student.pt", "generator.pt", "pool.png", "summary.json")
RUN_FOLDERS = ("images", "tensorboard")
DIVERGED = "Lower the learning rates, or turn mixed precision off (amp 'off')."


@dataclasses.dataclass
class DistillResult:
    """What distill returns: the trained student (the network given, trained in place), the generator (FastDFKD's meta
    generator, NAYER's label generator, CMI's last round's; None for DeepInversion, which optimises images), test
    accuracies
    in percent (None without test data), the accuracy at each evaluation, the summary, and the run folder (None
    without `out`)."""
    student: nn.Module
    generator: nn.Module
    teacher_acc: float | None
    student_acc: float | None
    history: list[dict]
    summary: dict
    run_dir: Path | None


def distill(teacher: nn.Module, student: nn.Module, *, image_shape: Sequence[int], num_classes: int | None = None,
            attention=None, test_data=None, out: str | os.PathLike | None = None, normalisation=None,
            resume: bool = False, overwrite: bool = False, progress: bool = True, run_record: dict | None = None,
            distributed: bool | None = None, callbacks: Sequence[Callback] = (), **settings) -> DistillResult:
    """Distils the trained `teacher` into `student` without data: Algorithm 1 of Micaelli & Storkey (2019).

    teacher, student: classifiers on images of `image_shape` (channels, side, side) returning logits, or (logits,
        attention feature maps) as this package's networks do. The teacher is frozen in eval mode; the student is
        trained in place and returned.
    attention: None pairs feature maps automatically (this package's networks: their own features; any others: the
        last block of each spatial size both produce); or a list of 'teacher_node:student_node' strings (module or
        torch.fx node names). Ignored when beta is 0 (KL only).
    test_data: a DataLoader (or any iterable of (images, labels) batches), a Dataset, or an (images, labels) pair of
        tensors, normalised as the teacher expects; the student is tested every eval_every iterations. None: no tests.
    **settings: the fields of ZeroShotSettings' parts (method, iterations, seed, device, batch_size, beta, student_lr,
        amp, compile, cuda_graphs, eval_every, bn_prior, ...), defaults the paper's CIFAR-10 run (iterations 80,000).
        method: 'zskt' (the default, the paper's), 'dfad', 'dafl' or 'dfq' (Algorithm 1's loop), 'fast',
        'deepinversion', 'nayer' or 'cmi' (rounds of synthesis into a pool and student steps on pool batches;
        `iterations` counts the rounds), docs/methods.md; its preset fills the objectives, n_G, n_S, the batch, the
        noise size and the temperature; each value can be given too (bn_prior=10, label_embedding='one-hot', ...).
    out: a run folder to write (metrics, image grids, checkpoints, student.pt, generator.pt, summary.json); with
        `resume` the run in it continues from its checkpoint (with the same networks and settings). None: nothing is
        written and the run cannot be resumed.
    normalisation: (mean, std) of the teacher's inputs, to show the generated images and to record in student.pt.
    run_record: settings recorded in config.json and checked on resume besides these (the command line records its
        whole configuration).
    distributed: None runs data-parallel over the torch.distributed process group when one is initialised (torchrun;
        batch_size is the global batch, split across ranks, and rank 0 alone writes files), else in this process
        alone; False ignores the process group; True requires it.
    callbacks: functions called as f(iterations_done, outputs) after every iteration, before its checkpoint (outputs:
        the last losses, the logits and the images, as device tensors). One that raises ends the run as a kill would:
        with the work since the last checkpoint lost.

    The generator is initialised from `seed` alone. SIGINT/SIGTERM stop a run with a folder after the iteration in
    progress, with a checkpoint, by raising RunInterrupted."""
    config = ZeroShotSettings.from_flat(settings, taker="distill").resolved()
    return distill_resolved(config, teacher, student, image_shape=image_shape, num_classes=num_classes,
                            attention=attention, test_data=test_data, out=out, normalisation=normalisation,
                            resume=resume, overwrite=overwrite, progress=progress, run_record=run_record,
                            distributed=distributed, callbacks=callbacks)


def distill_resolved(config: ZeroShotSettings, teacher: nn.Module, student: nn.Module, *, image_shape, num_classes,
                     attention, test_data, out, normalisation, resume: bool, overwrite: bool, progress: bool,
                     run_record: dict | None, distributed: bool | None, callbacks) -> DistillResult:
    """distill with settings resolved once, by its caller (distill, or the command line's TrainConfig)."""
    strategy = METHODS[config.objectives.method].strategy
    world = data_parallel_world(distributed, config.steps.batch_size)
    if world is not None:
        strategy.check_world(config, world.size)
    image_shape = check_image_shape(image_shape)
    normalisation = check_normalisation(normalisation, image_shape[0])
    device = torch.device(config.run.device)
    if num_classes is None and strategy.needs_classes:
        num_classes = teacher_classes(teacher, image_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        generator = strategy.make_generator(config, image_shape, num_classes)
    names = {"teacher": _name(teacher), "student": _name(student),
             "dataset": (run_record or {}).get("dataset", "custom")}
    check_cpu_bf16_training(student, image_shape, config.steps.amp, device)
    trained = [net for net in (student, generator) if net is not None]
    with global_batch_norm(trained, enabled=world is not None and config.loop.sync_bn):
        for net in (teacher, *trained):
            net.to(device)
        reads_features = StudentLoss(config.objectives, config.steps).reads_features
        teacher, student, pairs = pair_networks(teacher, student, image_shape=image_shape, attention=attention,
                                                use_attention=reads_features, num_classes=num_classes)
        check_teacher_for(config.objectives, teacher)
        record = {**(run_record or {}), **config.to_dict(), "image_shape": list(image_shape), "attention": attention,
                  "world_size": world.size if world else 1, **{k: v for k, v in names.items()
                                                               if k not in (run_record or {})}}
        run = Run(out, name="training", unit=strategy.unit, total=config.loop.iterations, files=RUN_FILES,
                  folders=RUN_FOLDERS, record=record, resume=resume, overwrite=overwrite, outputs=config.outputs,
                  world=world, device=device, progress=progress, advice=DIVERGED)
        parts = Assembly(teacher, student, generator, config, world, run, image_shape, num_classes, test_data,
                         normalisation, tuple(callbacks), names, pairs)
        summary = strategy.run(parts)
    return DistillResult(unwrap(student), parts.generator, summary["teacher_acc"], summary["student_acc"], run.history,
                         summary, run.folder)


def teacher_classes(teacher: nn.Module, image_shape) -> int:
    """The teacher's number of classes, from one blank image."""
    device = next(iter(teacher.parameters()), torch.zeros(())).device
    with torch.no_grad(), eval_mode(teacher):
        return int(classifier_logits(teacher(torch.zeros(1, *image_shape, device=device))).shape[1])


def check_image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape) if isinstance(image_shape, Sequence) else ()
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ValueError(f"image_shape must be (channels, height, width), got {image_shape!r}")
    if shape[1] != shape[2] or shape[1] % 4:
        raise ValueError(f"image_shape {shape}: the generator makes square images with a side divisible by 4 (it "
                         f"upsamples twice by 2)")
    return shape


def check_normalisation(normalisation, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the teacher's inputs, one value per channel each; None: 0 and 1."""
    mean, std = normalisation if normalisation is not None else ((0.0,) * channels, (1.0,) * channels)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalisation needs {channels} mean and {channels} std value(s) for {channels}-channel "
                         f"images, got {len(mean)} and {len(std)}")
    return tuple(mean), tuple(std)


def _name(net: nn.Module) -> str:
    return getattr(net, "arch_name", type(net).__name__)
