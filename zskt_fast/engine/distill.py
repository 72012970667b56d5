"""zskt_fast.distill: zero-shot knowledge transfer from any teacher into any student (Algorithm 1 around given
networks). It is the one training path: the command line builds networks and data by name and calls it.

Run folder (when `out` is given): config.json (the settings), metrics.jsonl, checkpoint.pt (atomic, every few minutes
and at the end), images/iter_NNNNNN.png at each evaluation, student.pt and generator.pt, summary.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..common import eval_mode, writable_folder
from ..models import Generator, pair_networks, unwrap
from .checkpoint import CheckpointError, atomic_save, check_finite, load_file, save_classifier
from .config import LoopSettings
from .distributed import World, agree, convert_batch_norm, current_world, mean_over_ranks
from .evaluation import as_batches, evaluate
from .loop import zero_shot_knowledge_transfer
from .metrics import MetricsLog, save_image_grid
from .schedules import cosine_lr
from .steps import GraphedZSKTSteps, ZSKTSteps

GRID_SAMPLES = 64
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.jsonl", "student.pt", "generator.pt", "summary.json")
LOCK_FILE = ".lock"


class RunFolderError(ValueError):
    """A run folder holds another run, is in use, or cannot be written."""


@dataclasses.dataclass
class DistillResult:
    """What distill returns: the trained student (the network given, trained in place), the generator, test accuracies
    in percent (None without test data), the accuracy at each evaluation, the summary, and the run folder (None
    without `out`). `stopped_at` is set when the run was stopped early on purpose (tests)."""
    student: nn.Module
    generator: nn.Module
    teacher_acc: float | None
    student_acc: float | None
    history: list[dict]
    summary: dict | None
    run_dir: Path | None
    stopped_at: int | None = None


class _Accumulator:
    """Sums of the per-iteration metrics on the device, read (one host synchronisation) only when logged. Its state
    goes into checkpoints, so that a window cut by a checkpoint continues exactly after a resume."""

    def __init__(self, device):
        self.sums = torch.zeros(4, device=device)
        self.count = 0

    @torch.no_grad()
    def add(self, outputs: dict) -> None:
        max_p_T = torch.softmax(outputs["teacher_logits"].float(), 1).amax(1).mean()
        max_p_S = torch.softmax(outputs["student_logits"].float(), 1).amax(1).mean()
        self.sums += torch.stack([outputs["loss_G"].float(), outputs["loss_S"].float(), max_p_T, max_p_S])
        self.count += 1

    def pop(self) -> dict:
        values = (self.sums / max(self.count, 1)).tolist()
        self.sums.zero_()
        self.count = 0
        return dict(zip(("loss_generator", "loss_student", "teacher_max_prob", "student_max_prob"), values))

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu().clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the run stopped after the iteration in progress and wrote a checkpoint."""

    def __init__(self, signum: int, run_dir: Path, iteration: int):
        self.signum, self.run_dir, self.iteration = signum, run_dir, iteration
        super().__init__(f"interrupted by {signal.Signals(signum).name} after iteration {iteration}; checkpoint "
                         f"written to {run_dir / 'checkpoint.pt'}")


@contextlib.contextmanager
def _stop_requests(enabled: bool = True):
    """SIGINT and SIGTERM (what schedulers send before pre-empting a job) ask the run to stop at the end of the
    iteration in progress; a second one stops it at once. Yields the dict that holds the signal once one came.
    Not `enabled` (a run without a folder, which has nowhere to write a checkpoint): the signals act as usual."""
    requested: dict[str, int] = {}

    def ask_to_stop(signum, _frame):
        if requested:
            raise KeyboardInterrupt
        requested["signal"] = signum

    handled = (signal.SIGINT, signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, ask_to_stop) for s in handled} if main_thread and enabled else {}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_run_folder(run_dir: str | os.PathLike, *, overwrite: bool = False, create: bool = True) -> None:
    """Raises RunFolderError when `run_dir` holds the files of a run (unless `overwrite`); with `create`, makes the
    folder and checks that it can be written."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} is a file, not a folder")
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not overwrite:
        raise RunFolderError(f"{run_dir} already holds a run ({', '.join(found)}): choose another output folder, "
                             f"resume that run, or overwrite it")
    if create:
        writable_folder(run_dir, "run folder")


@contextlib.contextmanager
def _exclusive(run_dir: Path):
    """An exclusive lock on the run folder while the run is live; a second writer is refused with the holder's pid.
    The lock is released when the process ends, however it ends."""
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(f"{run_dir} is in use by another run (pid {holder})") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape) if isinstance(image_shape, Sequence) else ()
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ValueError(f"image_shape must be (channels, height, width), got {image_shape!r}")
    if shape[1] != shape[2] or shape[1] % 4:
        raise ValueError(f"image_shape {shape}: the generator makes square images with a side divisible by 4 (it "
                         f"upsamples twice by 2)")
    return shape


def _loop_settings(values: dict) -> LoopSettings:
    names = {f.name for f in dataclasses.fields(LoopSettings)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}: distill takes {', '.join(sorted(names))}")
    return LoopSettings(**values).resolved()


def _name(net: nn.Module) -> str:
    return getattr(net, "arch_name", type(net).__name__)


def distill(teacher: nn.Module, student: nn.Module, *, image_shape: Sequence[int], num_classes: int | None = None,
            attention=None, test_data=None, iterations: int | None = None, seed: int = 0,
            out: str | os.PathLike | None = None, device: str | torch.device = "auto", normalisation=None,
            resume: bool = False, overwrite: bool = False, progress: bool = True, run_record: dict | None = None,
            distributed: bool | None = None, stop: int | None = None, **settings) -> DistillResult:
    """Distils the trained `teacher` into `student` without data: Algorithm 1 of Micaelli & Storkey (2019).

    teacher, student: classifiers on images of `image_shape` (channels, side, side) returning logits, or (logits,
        attention feature maps) as this package's networks do. The teacher is frozen in eval mode; the student is
        trained in place and returned.
    attention: None pairs feature maps automatically (this package's networks: their own features; any others: the
        last block of each spatial size both produce); or a list of 'teacher_node:student_node' strings (module or
        torch.fx node names). Ignored when beta is 0 (KL only).
    test_data: a DataLoader (or any iterable of (images, labels) batches), a Dataset, or an (images, labels) pair of
        tensors, normalised as the teacher expects; the student is tested every eval_every iterations. None: no tests.
    iterations, seed, device and **settings: the fields of LoopSettings (batch_size, beta, student_lr, amp, compile,
        cuda_graphs, eval_every, ...), defaults the paper's CIFAR-10 run (iterations 80,000).
    out: a run folder to write (metrics, image grids, checkpoints, student.pt, generator.pt, summary.json); with
        `resume` the run in it continues from its checkpoint (with the same networks and settings). None: nothing is
        written and the run cannot be resumed.
    normalisation: (mean, std) of the teacher's inputs, to show the generated images and to record in student.pt.
    run_record: settings recorded in config.json and checked on resume besides the loop settings (the command line
        records its whole configuration).
    distributed: None runs data-parallel over the torch.distributed process group when one is initialised (torchrun;
        batch_size is the global batch, split across ranks, and rank 0 alone writes files), else in this process
        alone; False ignores the process group; True requires it.
    stop: end after that many iterations of the schedule, as if the run were killed there (tests).

    The generator is initialised from `seed` alone. SIGINT/SIGTERM stop a run with a folder after the iteration in
    progress, with a checkpoint, by raising RunInterrupted."""
    config = _loop_settings({"iterations": iterations, "seed": seed, "device": str(device), **settings})
    world = current_world() if distributed is not False else None
    if distributed and world is None:
        raise ValueError("distributed=True needs an initialised torch.distributed process group (launch with torchrun)")
    if world is not None and config.batch_size % world.size:
        raise ValueError(f"the global batch size {config.batch_size} is not divisible by the world size {world.size}: "
                         f"choose a batch size that is a multiple of the number of processes")
    if world is not None and world.size == 1:
        world = None  # one rank computes what one process computes, with no collective to wait for
    writer = world is None or world.is_writer
    image_shape = _check_image_shape(image_shape)
    device = torch.device(config.device)
    channels = image_shape[0]
    mean, std = normalisation if normalisation is not None else ((0.0,) * channels, (1.0,) * channels)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalisation needs {channels} mean and {channels} std value(s) for {channels}-channel "
                         f"images, got {len(mean)} and {len(std)}")
    names = {"teacher": _name(teacher), "student": _name(student),
             "dataset": (run_record or {}).get("dataset", "custom")}
    record = {**(run_record or {}), **dataclasses.asdict(config), "image_shape": list(image_shape),
              "attention": attention, "world_size": world.size if world else 1,
              **{k: v for k, v in names.items() if k not in (run_record or {})}}
    loader = None if test_data is None or not writer else as_batches(test_data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = Generator(config.z_dim, image_shape[1], channels)
    if world is not None and config.sync_bn:  # before the networks are traced for their features
        convert_batch_norm(student)
        convert_batch_norm(generator)
    for net in (teacher, student, generator):
        net.to(device)
    teacher, student, pairs = pair_networks(teacher, student, image_shape=image_shape, attention=attention,
                                            use_attention=config.beta > 0, num_classes=num_classes)

    run_dir, state = None, None
    if out is not None:
        run_dir = Path(out).expanduser().absolute()
        if resume:
            state = _read_checkpoint(run_dir, record, device)
        else:  # every rank checks, then rank 0 alone creates and writes
            check_run_folder(run_dir, overwrite=overwrite, create=False)
            if world is not None:
                dist.barrier()
            if writer:
                check_run_folder(run_dir, overwrite=overwrite)
    elif resume:
        raise ValueError("resume needs the run folder (out) of the run to continue")
    write_dir = run_dir if writer else None
    try:
        with _exclusive(write_dir) if write_dir is not None else contextlib.nullcontext():
            if write_dir is not None and not resume:
                if overwrite:
                    for name in RUN_FILES:
                        (run_dir / name).unlink(missing_ok=True)
                    for folder in ("images", "tensorboard"):
                        shutil.rmtree(run_dir / folder, ignore_errors=True)
                (run_dir / "config.json").write_text(json.dumps(record, indent=2))
            return _run(config, record, teacher, student, generator, pairs, image_shape, (mean, std), names, device,
                        run_dir, write_dir, loader, state, progress and writer, stop, world)
    finally:
        if world is not None and config.sync_bn:  # the networks handed back are plain ones
            convert_batch_norm(unwrap(student), to_global=False)
            convert_batch_norm(generator, to_global=False)


def _read_checkpoint(run_dir: Path, record: dict, device: torch.device) -> dict:
    """The run's checkpoint, checked: finite weights, and settings that equal this call's (keys recorded by older
    versions only, or new ones they lack, are not compared)."""
    checkpoint_path = run_dir / "checkpoint.pt"
    if not checkpoint_path.is_file():
        raise CheckpointError(f"cannot resume: {checkpoint_path} does not exist (the run wrote no checkpoint yet)")
    state = load_file(checkpoint_path, map_location=device)
    saved = state.get("config", {})
    if saved.get("world_size", 1) != record["world_size"]:
        raise CheckpointError(f"{checkpoint_path} was written by a run of {saved.get('world_size', 1)} process(es) and "
                              f"is resumed by {record['world_size']}: resume it with the same number of processes "
                              f"(torchrun --nproc-per-node and --nnodes), whose steps it continues exactly")
    different = [k for k in record if k in saved and saved[k] != record[k]]
    if different:
        raise CheckpointError(f"{checkpoint_path} and {run_dir / 'config.json'} do not belong together: they differ "
                              f"in {', '.join(different)}")
    for part in ("student", "generator"):
        check_finite(state["steps"][part], f"{checkpoint_path} ({part})")
    return state


def _run(config: LoopSettings, settings_record: dict, teacher: nn.Module, student: nn.Module, generator: nn.Module,
         pairs, image_shape, normalisation, names: dict, device: torch.device, run_dir: Path | None,
         write_dir: Path | None, loader, state: dict | None, progress: bool, stop: int | None,
         world: World | None) -> DistillResult:
    """The loop with its outputs. `run_dir`: the run's folder (None: none); `write_dir`: the same where this process
    writes (rank 0), else None."""
    mean, std = normalisation
    teacher_acc = evaluate(teacher, loader, device) if loader is not None else None
    steps_class = GraphedZSKTSteps if config.cuda_graphs else ZSKTSteps
    steps = steps_class(teacher, student, generator, config.step_settings(), device, seed=config.seed, world=world)
    accumulator = _Accumulator(device)

    start, history, elapsed_before, window_start = 0, [], 0.0, 0
    if state is not None:
        steps.load_state_dict(state["steps"])
        start, history, elapsed_before = state["iteration"], state["history"], state["elapsed"]
        if "accumulator" in state:
            accumulator.load_state_dict(state["accumulator"])
            window_start = state.get("window_start", start)
        else:
            window_start = start
    if config.cuda_graphs:
        steps.set_learning_rates(start, config.iterations)
        steps.capture(generator_passes=config.n_student_steps)

    grid_z = torch.randn(GRID_SAMPLES, config.z_dim, generator=torch.Generator().manual_seed(config.seed + 1))
    log = None if write_dir is None else MetricsLog(
        write_dir / "metrics.jsonl", keep_until=start if state is not None else None,
        tensorboard_dir=str(write_dir / "tensorboard") if config.tensorboard else None)
    bar = tqdm(total=config.iterations, initial=start, desc="zero-shot", unit="it", disable=not progress,
               dynamic_ncols=True)
    clock = {"run_start": time.perf_counter(), "window": time.perf_counter(), "checkpoint": time.perf_counter(),
             "window_it": window_start}
    student_acc = history[-1]["student_acc"] if history else None

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - clock["run_start"]

    def write_checkpoint(next_iteration: int) -> None:
        # Every rank then holds the window's mean so far, which the checkpoint keeps for all of them.
        mean_over_ranks(accumulator.sums, world)
        if write_dir is not None:
            atomic_save({"iteration": next_iteration, "steps": steps.state_dict(), "history": history,
                         "elapsed": elapsed(), "config": settings_record, "accumulator": accumulator.state_dict(),
                         "window_start": clock["window_it"]}, write_dir / "checkpoint.pt")
        clock["checkpoint"] = time.perf_counter()

    def on_iteration_end(iteration: int, outputs: dict) -> None:
        nonlocal student_acc
        done = iteration + 1
        accumulator.add(outputs)
        bar.update(1)
        record = None
        if done % config.log_every == 0 or done % config.eval_every == 0 or done == config.iterations:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            mean_over_ranks(accumulator.sums, world)
            record = {"iteration": done, **accumulator.pop(),
                      "lr_generator": cosine_lr(config.generator_lr, iteration, config.iterations),
                      "lr_student": cosine_lr(config.student_lr, iteration, config.iterations),
                      "seconds_per_iteration": (now - clock["window"]) / max(done - clock["window_it"], 1)}
            clock["window"], clock["window_it"] = now, done
            if not all(math.isfinite(record[k]) for k in ("loss_generator", "loss_student")):
                raise FloatingPointError(
                    f"training diverged: non-finite loss by iteration {done} (generator {record['loss_generator']}, "
                    f"student {record['loss_student']})" + (f"; the last checkpoint in {run_dir} predates it" if run_dir
                                                            else "") +
                    ". Lower the learning rates, or turn mixed precision off (amp 'off').")
        if done % config.eval_every == 0 or done == config.iterations:
            if loader is not None:
                student_acc = evaluate(student, loader, device)
                history.append({"iteration": done, "student_acc": student_acc})
                record["student_acc"] = student_acc
                bar.write(f"iteration {done}/{config.iterations}: student test accuracy {student_acc:.2f}% "
                          f"(teacher {teacher_acc:.2f}%)")
            if write_dir is not None:
                with torch.no_grad(), eval_mode(generator):
                    images = generator(grid_z.to(device))
                save_image_grid(images, write_dir / "images" / f"iter_{done:06d}.png", mean=mean, std=std)
        if record is not None:
            if log is not None:
                log.write(record)
            shown = {"loss_G": f"{record['loss_generator']:.3f}", "loss_S": f"{record['loss_student']:.3f}"}
            if history:
                shown["acc"] = f"{student_acc:.1f}"
            bar.set_postfix(shown)
        due_by_clock = time.perf_counter() - clock["checkpoint"] >= 60 * config.checkpoint_minutes
        stopping, due_by_clock = agree([bool(stop_requested), due_by_clock], world, device)
        due = (config.checkpoint_every and done % config.checkpoint_every == 0) or due_by_clock
        if (due or stopping) and done < config.iterations:
            write_checkpoint(done)
        if stopping and done < config.iterations:
            raise RunInterrupted(stop_requested.get("signal", signal.SIGTERM), run_dir, done)

    try:
        with _stop_requests(enabled=run_dir is not None) as stop_requested:
            zero_shot_knowledge_transfer(steps, iterations=config.iterations,
                                         n_generator_steps=config.n_generator_steps,
                                         n_student_steps=config.n_student_steps, start=start, stop=stop,
                                         on_iteration_end=on_iteration_end)
    finally:
        bar.close()
        if log is not None:
            log.close()
    result = DistillResult(unwrap(student), generator, teacher_acc, student_acc, history, None, run_dir)
    if stop is not None and stop < config.iterations:
        result.stopped_at = stop
        return result
    write_checkpoint(config.iterations)
    seconds = elapsed()
    result.summary = {**names, "seed": config.seed, "teacher_acc": teacher_acc, "student_acc": student_acc,
                      "iterations": config.iterations, "seconds": seconds,
                      "iterations_per_second": config.iterations / seconds if seconds else None,
                      "device": str(device), "amp": config.amp, "cuda_graphs": config.cuda_graphs,
                      "backend": config.backend, "attention_pairs": pairs, "history": history}
    if write_dir is not None:
        save_classifier(unwrap(student), run_dir / "student.pt", test_acc=student_acc, arch=names["student"],
                        dataset=names["dataset"], teacher=names["teacher"],
                        normalisation={"mean": list(mean), "std": list(std)})
        atomic_save({"state_dict": {k: v.cpu() for k, v in generator.state_dict().items()}, "z_dim": config.z_dim,
                     "image_size": image_shape[1], "channels": image_shape[0]}, run_dir / "generator.pt")
        (run_dir / "summary.json").write_text(json.dumps(result.summary, indent=2))
    return result
