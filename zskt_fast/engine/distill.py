"""zskt_fast.distill: zero-shot knowledge transfer from any teacher into any student (Algorithm 1 around given
networks). It is the one training path: the command line builds networks and data by name and calls it.

Run folder (when `out` is given): config.json (the settings), metrics.jsonl, checkpoint.pt (atomic, every few minutes
and at the end), images/iter_NNNNNN.png at each evaluation, student.pt and generator.pt, summary.json.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..common import eval_mode
from ..models import Generator, pair_networks, unwrap
from .checkpoint import atomic_save, save_classifier
from .config import ZeroShotSettings
from .distributed import World, check_global_batch, data_parallel_world, global_batch_norm, mean_over_ranks
from .evaluation import as_batches, evaluate
from .loop import zero_shot_knowledge_transfer
from .metrics import MetricsWindow, save_image_grid
from .objectives import check_teacher_for
from .pool_distill import distill_from_pool, pool_augmentation
from .recipes import METHODS
from .run import Run
from .schedules import cosine_lr
from .speed import check_cpu_bf16_training
from .graphs import GraphedZSKTSteps
from .steps import ZSKTSteps

GRID_SAMPLES = 64
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.jsonl", "student.pt", "generator.pt", "pool.png", "summary.json")
RUN_FOLDERS = ("images", "tensorboard")
DIVERGED = "Lower the learning rates, or turn mixed precision off (amp 'off')."
Callback = Callable[[int, dict], None]


@dataclasses.dataclass
class DistillResult:
    """What distill returns: the trained student (the network given, trained in place), the generator (FastDFKD's meta
    generator; None for DeepInversion, which optimises images), test accuracies
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
        method: 'zskt' (the default, the paper's), 'dfad', 'dafl' or 'dfq' (Algorithm 1's loop), 'fast' or
        'deepinversion' (rounds of synthesis into a pool and student steps on pool batches; `iterations` counts the
        rounds), docs/methods.md; its preset fills the objectives, n_G, n_S, the batch, the noise size and the
        temperature; each value can be given too (bn_prior=10, ...).
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
    world = data_parallel_world(distributed, config.steps.batch_size)
    image_shape = check_image_shape(image_shape)
    normalisation = check_normalisation(normalisation, image_shape[0])
    device = torch.device(config.run.device)
    pool_method = METHODS[config.objectives.method].shape == "pool"
    if pool_method and world is not None:
        check_global_batch(config.pool.pool_size, world.size, "pool_size")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        generator = new_generator(config, image_shape)
    names = {"teacher": _name(teacher), "student": _name(student),
             "dataset": (run_record or {}).get("dataset", "custom")}
    check_cpu_bf16_training(student, image_shape, config.steps.amp, device)
    trained = [net for net in (student, generator) if net is not None]
    with global_batch_norm(trained, enabled=world is not None and config.loop.sync_bn):
        for net in (teacher, *trained):
            net.to(device)
        teacher, student, pairs = pair_networks(teacher, student, image_shape=image_shape, attention=attention,
                                                use_attention=uses_attention(config), num_classes=num_classes)
        check_teacher_for(config.objectives, teacher)
        record = {**(run_record or {}), **config.to_dict(), "image_shape": list(image_shape), "attention": attention,
                  "world_size": world.size if world else 1, **{k: v for k, v in names.items()
                                                               if k not in (run_record or {})}}
        run = Run(out, name="training", unit="round" if pool_method else "iteration", total=config.loop.iterations,
                  files=RUN_FILES, folders=RUN_FOLDERS, record=record, resume=resume, overwrite=overwrite,
                  outputs=config.outputs, world=world, device=device, progress=progress, advice=DIVERGED)
        if pool_method:
            augmentation = pool_augmentation(config.pool.augmentation, names["dataset"], image_shape[1])
            summary = distill_from_pool(teacher, student, generator, config, world, run, image_shape=image_shape,
                                        num_classes=num_classes or _classes(teacher, image_shape, device),
                                        test_data=test_data, normalisation=normalisation,
                                        augmentation=augmentation, callbacks=callbacks, names=names, pairs=pairs)
            return DistillResult(unwrap(student), generator, summary["teacher_acc"], summary["student_acc"],
                                 run.history, summary, run.folder)
        steps = build_steps(teacher, student, generator, config, world, run)
        try:
            outputs = _Outputs(run, steps, config, test_data, normalisation, callbacks)
            with run:
                zero_shot_knowledge_transfer(steps, iterations=config.loop.iterations,
                                             n_generator_steps=config.loop.n_generator_steps,
                                             n_student_steps=config.loop.n_student_steps, start=run.start,
                                             on_iteration_end=outputs.after_iteration)
                summary = outputs.finish({**names, "seed": config.run.seed}, pairs)
        finally:
            steps.generator_objective.remove_hooks()  # the teacher is the caller's network
    return DistillResult(unwrap(student), generator, outputs.teacher_acc, outputs.student_acc, run.history, summary,
                         run.folder)


def new_generator(config: ZeroShotSettings, image_shape) -> nn.Module | None:
    """The method's generator, initialised from the global RNG: ZSKT's (images in the teacher's input space), the
    frameworks' (pixels through a sigmoid) for FastDFKD, none for DeepInversion, which optimises images."""
    method = config.objectives.method
    if method == "deepinversion":
        return None
    output = "sigmoid" if METHODS[method].shape == "pool" else "batchnorm"
    return Generator(config.steps.z_dim, image_shape[1], image_shape[0], output=output)


def _classes(teacher: nn.Module, image_shape, device) -> int:
    """The teacher's number of classes, from one blank image."""
    with torch.no_grad(), eval_mode(teacher):
        return int(teacher(torch.zeros(1, *image_shape, device=device))[0].shape[1])


def build_steps(teacher: nn.Module, student: nn.Module, generator: nn.Module, config: ZeroShotSettings,
                world: World | None, run: Run) -> ZSKTSteps:
    """The steps of Algorithm 1, in the state of the run's checkpoint when it resumes; captured as CUDA graphs after
    that when they replay."""
    steps_class = GraphedZSKTSteps if config.steps.cuda_graphs else ZSKTSteps
    steps = steps_class(teacher, student, generator, config.steps, run.device, seed=config.run.seed, world=world,
                        objectives=config.objectives)
    if run.state is not None:
        steps.load_state_dict(run.state["steps"])
    if config.steps.cuda_graphs:
        steps.set_learning_rates(run.start, config.loop.iterations)
        steps.capture(generator_passes=config.loop.n_student_steps)
    return steps


class _Outputs:
    """What a zero-shot run reports after each iteration (metrics, tests, image grids, callbacks) and writes at its
    end (student.pt, generator.pt, summary.json)."""

    def __init__(self, run: Run, steps: ZSKTSteps, config: ZeroShotSettings, test_data, normalisation, callbacks):
        self.run, self.steps, self.config, self.callbacks = run, steps, config, callbacks
        self.normalisation = normalisation
        self.loader = as_batches(test_data) if test_data is not None and run.is_writer else None
        self.teacher_acc = evaluate(steps.teacher, self.loader, run.device) if self.loader is not None else None
        self.student_acc = run.history[-1]["student_acc"] if run.history else None
        self.window = MetricsWindow(run.device)
        if run.state is not None and "accumulator" in run.state:
            self.window.load_state_dict(run.state["accumulator"])
        self.grid_z = torch.randn(GRID_SAMPLES, config.steps.z_dim,
                                  generator=torch.Generator().manual_seed(config.run.seed + 1))

    def after_iteration(self, iteration: int, outputs: dict) -> None:
        done, every, last = iteration + 1, self.config.outputs, iteration + 1 == self.config.loop.iterations
        self.window.add(outputs)
        evaluate_now = done % every.eval_every == 0 or last
        if done % every.log_every == 0 or evaluate_now:
            mean_over_ranks(self.window.sums, self.run.world)
            values = {**self.window.pop(), **self._learning_rates(iteration)}
            if evaluate_now:
                values.update(self._evaluate(done))
            record = self.run.log(done, values, check=("loss_generator", "loss_student"))
            shown = {"loss_G": f"{record['loss_generator']:.3f}", "loss_S": f"{record['loss_student']:.3f}"}
            self.run.show(**shown, **({"acc": f"{self.student_acc:.1f}"} if self.student_acc is not None else {}))
        for callback in self.callbacks:
            callback(done, outputs)
        self.run.iteration_done(done, self.state)

    def _learning_rates(self, iteration: int) -> dict:
        steps, total = self.config.steps, self.config.loop.iterations
        return {"lr_generator": cosine_lr(steps.generator_lr, iteration, total),
                "lr_student": cosine_lr(steps.student_lr, iteration, total)}

    def _evaluate(self, done: int) -> dict:
        """The student's test accuracy (with test data) and an image grid (with a run folder)."""
        values = {}
        if self.loader is not None:
            self.student_acc = evaluate(self.steps.student, self.loader, self.run.device)
            self.run.evaluated(done, self.student_acc)
            values["student_acc"] = self.student_acc
            self.run.say(f"iteration {done}/{self.config.loop.iterations}: student test accuracy "
                         f"{self.student_acc:.2f}% (teacher {self.teacher_acc:.2f}%)")
        if self.run.writes:
            generator = self.steps.generator
            with torch.no_grad(), eval_mode(generator):
                images = generator(self.grid_z.to(self.run.device))
            mean, std = self.normalisation
            save_image_grid(images, self.run.folder / "images" / f"iter_{done:06d}.png", mean=mean, std=std)
        return values

    def state(self) -> dict:
        """The checkpoint's part of this trainer. Every rank then holds the window's mean so far, which the checkpoint
        keeps for all of them."""
        mean_over_ranks(self.window.sums, self.run.world)
        return {"steps": self.steps.state_dict(), "accumulator": self.window.state_dict()}

    def finish(self, names: dict, pairs) -> dict:
        run, config = self.run, self.config
        run.checkpoint(config.loop.iterations, self.state())
        if run.writes:
            mean, std = self.normalisation
            save_classifier(unwrap(self.steps.student), run.folder / "student.pt", test_acc=self.student_acc,
                            arch=names["student"], dataset=names["dataset"], teacher=names["teacher"],
                            normalisation={"mean": list(mean), "std": list(std)})
            generator = self.steps.generator
            atomic_save({"state_dict": {k: v.cpu() for k, v in generator.state_dict().items()},
                         "z_dim": config.steps.z_dim, "image_size": generator.image_size,
                         "channels": generator.channels}, run.folder / "generator.pt")
        return run.finish({**names, "method": config.objectives.method, "teacher_acc": self.teacher_acc,
                           "student_acc": self.student_acc, "iterations": config.loop.iterations,
                           "device": str(run.device), "amp": config.steps.amp,
                           "cuda_graphs": config.steps.cuda_graphs, "backend": config.steps.backend,
                           "attention_pairs": pairs, "history": run.history})


def uses_attention(config) -> bool:
    """Whether the student's loss reads feature maps: ZSKT's KL + attention transfer with beta > 0."""
    return config.objectives.student_loss == "kl-at" and config.steps.beta > 0


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
