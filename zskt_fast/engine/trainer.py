"""One zero-shot run: builds the networks, resumes if asked, runs Algorithm 1 and writes the run folder.

Run folder: config.json (resolved settings), metrics.jsonl, checkpoint.pt (atomic, every few minutes and at the end),
images/iter_NNNNNN.png at each evaluation, student.pt and generator.pt, summary.json.
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
from pathlib import Path

import torch
from tqdm import tqdm

from ..common import eval_mode, writable_folder
from ..data import dataset_info, evaluation_loader, normalisation_of
from ..models import Generator, build_classifier, check_pairable
from .checkpoint import (CheckpointError, atomic_save, check_finite, load_file, load_into, recorded_normalisation,
                         save_classifier)
from .config import PretrainConfig, TrainConfig
from .evaluation import evaluate
from .loop import zero_shot_knowledge_transfer
from .metrics import MetricsLog, save_image_grid
from .schedules import cosine_lr
from .steps import GraphedZSKTSteps, ZSKTSteps
from .teachers import default_teacher_path, pretrain_teacher

GRID_SAMPLES = 64
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.jsonl", "student.pt", "generator.pt", "summary.json")
LOCK_FILE = ".lock"


class RunFolderError(ValueError):
    """A run folder holds another run, is in use, or cannot be written."""


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
def _stop_requests():
    """SIGINT and SIGTERM (what schedulers send before pre-empting a job) ask the run to stop at the end of the
    iteration in progress; a second one stops it at once. Yields the dict that holds the signal once one came."""
    requested: dict[str, int] = {}

    def ask_to_stop(signum, _frame):
        if requested:
            raise KeyboardInterrupt
        requested["signal"] = signum

    handled = (signal.SIGINT, signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, ask_to_stop) for s in handled} if main_thread else {}
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


def _check_networks(config: TrainConfig, info, teacher_file: tuple[str, dict] | None) -> None:
    """The architectures exist and pair, and the teacher file fits, before anything is created or pretrained (the
    global random state is left as it was: the networks of the run are built from the seed later)."""
    with torch.random.fork_rng(devices=[]):
        teacher = build_classifier(config.teacher, info.num_classes, info.channels)
        student = build_classifier(config.student, info.num_classes, info.channels)
        Generator(config.z_dim, info.image_size, info.channels)
        check_pairable(teacher, student, in_channels=info.channels, image_size=info.image_size,
                       attention=config.beta > 0)
        if teacher_file is not None:
            load_into(teacher, teacher_file[1], teacher_file[0], "teacher")


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
    info: object
    loader: object
    teacher_path: str
    pretrain_first: bool
    teacher_file: tuple[str, dict] | None


def check_run(config: TrainConfig) -> _Checked:
    """Every check that needs no run folder: the settings, the data set, the architectures and their pairing, the
    teacher file (read once, kept for the run). Nothing is created or pretrained."""
    config = config.resolved()
    info = dataset_info(config.dataset)
    try:
        teacher_path, pretrain_first = find_teacher(config)
    except CheckpointError:
        evaluation_loader(config.dataset, root=config.data_root, download=config.download)  # the more basic error
        raise
    teacher_file = None if pretrain_first else (teacher_path, load_file(teacher_path))
    if config.mean is None:  # the normalisation the teacher was trained with, as its file records it
        recorded = recorded_normalisation(teacher_file[1]) if teacher_file else None
        mean, std = recorded or normalisation_of(config.dataset)
        config.mean, config.std = list(mean), list(std)
    loader = evaluation_loader(config.dataset, root=config.data_root, download=config.download,
                               normalisation=(config.mean, config.std))
    _check_networks(config, info, teacher_file)
    return _Checked(config, info, loader, teacher_path, pretrain_first, teacher_file)


def train(config: TrainConfig | None, run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, stop: int | None = None) -> dict:
    """Runs (or, with `resume`, continues from its checkpoint) one seed of zero-shot knowledge transfer into
    `run_dir`; returns the summary. A folder that holds another run is refused unless `overwrite`; with `resume`
    the run's saved config.json applies and `config` is not used.

    SIGINT/SIGTERM stop the run after the iteration in progress, with a checkpoint, by raising RunInterrupted.
    `stop` ends the run after that many iterations of the schedule (as if it were killed there), for tests."""
    run_dir = Path(run_dir).expanduser().absolute()
    if resume:
        config = _read_run_config(run_dir)
    # Everything that can be checked is checked before the run folder is touched or a teacher pretrained.
    checked = check_run(config)
    config, teacher_path, teacher_file = checked.config, checked.teacher_path, checked.teacher_file
    device = torch.device(config.device)
    checkpoint_path = run_dir / "checkpoint.pt"
    state = None
    if resume:
        if not checkpoint_path.is_file():
            raise CheckpointError(f"cannot resume: {checkpoint_path} does not exist (the run wrote no checkpoint yet)")
        state = load_file(checkpoint_path, map_location=device)
        saved = TrainConfig.from_dict(state.get("config", config.to_dict()), source=f"{checkpoint_path} (config)")
        different = [f.name for f in dataclasses.fields(TrainConfig)
                     if getattr(saved, f.name) != getattr(config, f.name)]
        if different:
            raise CheckpointError(f"{checkpoint_path} and {run_dir / 'config.json'} do not belong together: they differ "
                                  f"in {', '.join(different)}")
        for part in ("student", "generator"):
            check_finite(state["steps"][part], f"{checkpoint_path} ({part})")
    else:
        check_run_folder(run_dir, overwrite=overwrite)

    with _exclusive(run_dir):
        if overwrite and not resume:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
            for folder in ("images", "tensorboard"):
                shutil.rmtree(run_dir / folder, ignore_errors=True)
        if checked.pretrain_first:
            pretrain_cached_teacher(config, teacher_path, progress)
            teacher_file = (teacher_path, load_file(teacher_path))
        config.teacher_ckpt = teacher_path
        if not resume:
            (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        return _run(config, checked.info, device, run_dir, checked.loader, teacher_file[1], state, progress, stop)


def _run(config: TrainConfig, info, device: torch.device, run_dir: Path, loader, teacher_state: dict,
         state: dict | None, progress: bool, stop: int | None) -> dict:
    checkpoint_path = run_dir / "checkpoint.pt"
    torch.manual_seed(config.seed)
    teacher = build_classifier(config.teacher, info.num_classes, info.channels)
    student = build_classifier(config.student, info.num_classes, info.channels)
    generator = Generator(config.z_dim, info.image_size, info.channels)
    load_into(teacher, teacher_state, config.teacher_ckpt, "teacher")
    for net in (teacher, student, generator):
        net.to(device)

    teacher_acc = evaluate(teacher, loader, device)
    steps_class = GraphedZSKTSteps if config.cuda_graphs else ZSKTSteps
    steps = steps_class(teacher, student, generator, config.step_settings(), device, seed=config.seed)
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
    log = MetricsLog(run_dir / "metrics.jsonl", keep_until=start if state is not None else None,
                     tensorboard_dir=str(run_dir / "tensorboard") if config.tensorboard else None)
    bar = tqdm(total=config.iterations, initial=start, desc="zero-shot", unit="it", disable=not progress,
               dynamic_ncols=True)
    clock = {"run_start": time.perf_counter(), "window": time.perf_counter(), "checkpoint": time.perf_counter(),
             "window_it": window_start}
    student_acc = history[-1]["student_acc"] if history else float("nan")

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - clock["run_start"]

    def write_checkpoint(next_iteration: int) -> None:
        atomic_save({"iteration": next_iteration, "steps": steps.state_dict(), "history": history,
                     "elapsed": elapsed(), "config": config.to_dict(), "accumulator": accumulator.state_dict(),
                     "window_start": clock["window_it"]}, checkpoint_path)
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
            record = {"iteration": done, **accumulator.pop(),
                      "lr_generator": cosine_lr(config.generator_lr, iteration, config.iterations),
                      "lr_student": cosine_lr(config.student_lr, iteration, config.iterations),
                      "seconds_per_iteration": (now - clock["window"]) / max(done - clock["window_it"], 1)}
            clock["window"], clock["window_it"] = now, done
            if not all(math.isfinite(record[k]) for k in ("loss_generator", "loss_student")):
                raise FloatingPointError(
                    f"training diverged: non-finite loss by iteration {done} (generator {record['loss_generator']}, "
                    f"student {record['loss_student']}); the last checkpoint in {run_dir} predates it. Lower the "
                    f"learning rates, or turn mixed precision off (amp 'off').")
        if done % config.eval_every == 0 or done == config.iterations:
            student_acc = evaluate(student, loader, device)
            history.append({"iteration": done, "student_acc": student_acc})
            record["student_acc"] = student_acc
            with torch.no_grad(), eval_mode(generator):
                images = generator(grid_z.to(device))
            save_image_grid(images, run_dir / "images" / f"iter_{done:06d}.png", mean=config.mean, std=config.std)
            bar.write(f"iteration {done}/{config.iterations}: student test accuracy {student_acc:.2f}% "
                      f"(teacher {teacher_acc:.2f}%)")
        if record is not None:
            log.write(record)
            shown = {"loss_G": f"{record['loss_generator']:.3f}", "loss_S": f"{record['loss_student']:.3f}"}
            if history:
                shown["acc"] = f"{student_acc:.1f}"
            bar.set_postfix(shown)
        due = (config.checkpoint_every and done % config.checkpoint_every == 0) or \
            time.perf_counter() - clock["checkpoint"] >= 60 * config.checkpoint_minutes
        if (due or stop_requested) and done < config.iterations:
            write_checkpoint(done)
        if stop_requested and done < config.iterations:
            raise RunInterrupted(stop_requested["signal"], run_dir, done)

    try:
        with _stop_requests() as stop_requested:
            zero_shot_knowledge_transfer(steps, iterations=config.iterations,
                                         n_generator_steps=config.n_generator_steps,
                                         n_student_steps=config.n_student_steps, start=start, stop=stop,
                                         on_iteration_end=on_iteration_end)
    finally:
        bar.close()
        log.close()
    finished = stop is None or stop >= config.iterations
    if not finished:
        return {"stopped_at": stop}
    write_checkpoint(config.iterations)
    metadata = {"arch": config.student, "dataset": config.dataset, "teacher": config.teacher,
                "normalisation": {"mean": config.mean, "std": config.std}}
    save_classifier(student, run_dir / "student.pt", test_acc=student_acc, **metadata)
    atomic_save({"state_dict": {k: v.cpu() for k, v in generator.state_dict().items()}, "z_dim": config.z_dim,
                 "image_size": info.image_size, "channels": info.channels}, run_dir / "generator.pt")
    seconds = elapsed()
    summary = {"teacher": config.teacher, "student": config.student, "dataset": config.dataset, "seed": config.seed,
               "teacher_acc": teacher_acc, "student_acc": student_acc, "iterations": config.iterations,
               "seconds": seconds, "iterations_per_second": config.iterations / seconds if seconds else None,
               "device": str(device), "amp": config.amp, "cuda_graphs": config.cuda_graphs,
               "backend": config.backend, "history": history}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
