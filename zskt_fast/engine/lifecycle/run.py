"""The life of one training run, the same for zero-shot distillation, the few-shot baseline and pretraining.

A trainer brings its loop and the state it checkpoints; the run brings everything around the loop: the folder (checked,
locked, cleared, its config.json), the signals that stop it cleanly, the progress bar, the metrics log and its guard
against non-finite losses, checkpoints on a clock and on demand, resume, and summary.json:

    run = Run(folder, name="training", unit="iteration", total=N, files=..., record=config, outputs=settings)
    with run:                                            # lock, signals, metrics log, progress bar
        for done in range(run.start + 1, N + 1):         # run.start: 0, or the checkpoint's iteration on resume
            ...                                          # one iteration
            run.log(done, {"loss": loss})                # when one is due: ends the run if the loss is not finite
            run.iteration_done(done, state)              # checkpoint when due; on SIGINT/SIGTERM, stop with one
        run.checkpoint(N, state())
        run.finish(summary)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ...common import atomic_write_text, writable_folder
from .checkpoint import CheckpointError, atomic_save, check_finite_weights, load_file
from .distributed import World, agree
from .metrics import MetricsLog

LOCK_FILE = ".lock"
BAR_UNITS = {"iteration": "it"}


class RunFolderError(ValueError):
    """A run folder holds another run, is in use, or cannot be written."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the run stopped after the iteration in progress and wrote a checkpoint."""

    def __init__(self, signum: int, run_dir: Path, iteration: int):
        self.signum, self.run_dir, self.iteration = signum, run_dir, iteration
        super().__init__(f"interrupted by {signal.Signals(signum).name} after iteration {iteration}; checkpoint "
                         f"written to {run_dir / 'checkpoint.pt'}")


def check_run_folder(folder: str | os.PathLike, files: Sequence[str], *, overwrite: bool = False,
                     create: bool = True) -> None:
    """Raises RunFolderError when `folder` holds any of a run's `files` (unless `overwrite`); with `create`, makes
    the folder and checks that it can be written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run folder {folder} is a file, not a folder")
    found = [name for name in files if (folder / name).exists()]
    if found and not overwrite:
        raise RunFolderError(f"{folder} already holds a run ({', '.join(found)}): choose another output folder, "
                             f"resume that run, or overwrite it")
    if create:
        writable_folder(folder, "run folder")


@contextlib.contextmanager
def hold_folder(folder: Path):
    """An exclusive lock on a run folder while its run is live; a second writer is refused with the holder's pid.
    The lock is released when the process ends, however it ends."""
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(f"{folder} is in use by another run (pid {holder})") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def stop_requests(enabled: bool = True):
    """SIGINT and SIGTERM (what schedulers send before pre-empting a job) ask the run to stop at the end of the
    iteration in progress; a second one stops it at once. Yields the dict that holds the signal once one came. Not
    `enabled` (a run without a folder, which has nowhere to write a checkpoint): the signals act as usual."""
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


class Run:
    """One run of a trainer. `folder` None: nothing is written (no checkpoints, no resume); `outputs`: the resolved
    OutputSettings, None: no checkpoints (pretraining, which writes one file at its end); `world`: the ranks of a
    data-parallel run, which all call every method (rank 0 alone writes); `advice`: what the error of a diverged run
    suggests."""

    def __init__(self, folder: str | os.PathLike | None, *, name: str, unit: str, total: int,
                 files: Sequence[str] = (), folders: Sequence[str] = (), record: dict | None = None,
                 resume: bool = False, overwrite: bool = False, outputs=None,
                 world: World | None = None, device: torch.device = torch.device("cpu"), progress: bool = True,
                 advice: str = ""):
        self.folder = None if folder is None else Path(folder).expanduser().absolute()
        self.name, self.unit, self.total, self.files, self.folders = name, unit, total, tuple(files), tuple(folders)
        self.record, self.resume, self.overwrite, self.outputs = record or {}, resume, overwrite, outputs
        self.world, self.device, self.advice = world, torch.device(device), advice
        self.is_writer = world is None or world.is_writer
        self.writes = self.folder is not None and self.is_writer
        self.progress = progress and self.is_writer
        if resume and self.folder is None:
            raise ValueError("resume needs the run folder (out) of the run to continue")
        self.state = self._read_checkpoint() if resume else None
        if self.folder is not None and not resume:  # every rank checks, then rank 0 alone creates
            check_run_folder(self.folder, self.files, overwrite=overwrite, create=False)
            if world is not None:
                dist.barrier()
            if self.writes:
                check_run_folder(self.folder, self.files, overwrite=overwrite)
        self.start = self.state["iteration"] if self.state else 0
        self.history: list[dict] = self.state["history"] if self.state else []
        self._elapsed_before = self.state["elapsed"] if self.state else 0.0

    # -- the block the loop runs in ----------------------------------------------------------------------------------
    def __enter__(self) -> Run:
        self._exit = contextlib.ExitStack()
        if self.writes:
            self._exit.enter_context(hold_folder(self.folder))
            if not self.resume:
                self._clear()
                atomic_write_text(self.folder / "config.json", json.dumps(self.record, indent=2))
        self._stop = self._exit.enter_context(stop_requests(enabled=self.folder is not None))
        self.metrics = None
        if self.writes and self.outputs is not None:
            tensorboard = self.folder / "tensorboard" if self.outputs.tensorboard else None
            self.metrics = MetricsLog(self.folder / "metrics.jsonl", keep_until=self.start if self.resume else None,
                                      tensorboard_dir=str(tensorboard) if tensorboard else None)
            self._exit.callback(self.metrics.close)
        self.bar = tqdm(total=self.total, initial=self.start, desc=self.name, unit=BAR_UNITS.get(self.unit, self.unit),
                        disable=not self.progress, dynamic_ncols=True)
        self._exit.callback(self.bar.close)
        self._started = self._last_checkpoint = time.perf_counter()
        self._window = (self._started, self.start)
        return self

    def __exit__(self, *error) -> bool:
        return self._exit.__exit__(*error)

    def _clear(self) -> None:
        """A new run in a folder it may overwrite: the old run's files go first."""
        for name in self.files:
            (self.folder / name).unlink(missing_ok=True)
        for name in self.folders:
            shutil.rmtree(self.folder / name, ignore_errors=True)

    # -- during the loop ---------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of work, over every part of a resumed run."""
        return self._elapsed_before + time.perf_counter() - self._started

    def log(self, done: int, values: dict, *, check: Sequence[str] = ()) -> dict:
        """Records `values` after `done` iterations, with the seconds per iteration since the last record; a
        non-finite value among `check` ends the run (FloatingPointError) before anything of it is written."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        record = {"iteration": done, **values,
                  "seconds_per_iteration": (now - self._window[0]) / max(done - self._window[1], 1)}
        self._window = (now, done)
        if not all(math.isfinite(record[k]) for k in check):
            shown = ", ".join(f"{k} {record[k]}" for k in check)
            kept = f"; the last checkpoint in {self.folder} predates it" if self.folder and self.outputs else ""
            raise FloatingPointError(f"{self.name} diverged: non-finite loss by {self.unit} {done} ({shown}){kept}. "
                                     f"{self.advice}")
        if self.metrics is not None:
            self.metrics.write(record)
        return record

    def evaluated(self, done: int, accuracy: float) -> None:
        """The student's test accuracy after `done` iterations, and the seconds of work it took to get there (over
        every part of a resumed run), kept in the history (and the checkpoint)."""
        self.history.append({"iteration": done, "student_acc": accuracy, "seconds": self.elapsed()})

    def show(self, **fields: str) -> None:
        self.bar.set_postfix(fields)

    def say(self, text: str) -> None:
        if self.progress:
            self.bar.write(text)

    def iteration_done(self, done: int, state: Callable[[], dict]) -> None:
        """After iteration `done` (counted from 1): advances the progress bar; writes a checkpoint of `state()` when
        one is due (every checkpoint_every iterations, or checkpoint_minutes since the last) or a signal asked to
        stop, and then stops (RunInterrupted). Every rank calls it and they decide together."""
        self.bar.update(1)
        if self.outputs is None:
            return
        by_clock = time.perf_counter() - self._last_checkpoint >= 60 * self.outputs.checkpoint_minutes
        stopping, by_clock = agree([bool(self._stop), by_clock], self.world, self.device)
        every = self.outputs.checkpoint_every
        if ((every and done % every == 0) or by_clock or stopping) and done < self.total:
            self.checkpoint(done, state())
        if stopping and done < self.total:
            raise RunInterrupted(self._stop.get("signal", signal.SIGTERM), self.folder, done)

    def checkpoint(self, iteration: int, state: dict) -> None:
        """Everything needed to continue after `iteration`: the trainer's `state` and the run's own (time, history,
        settings), written atomically."""
        if self.writes:
            atomic_save({"iteration": iteration, "elapsed": self.elapsed(), "history": self.history,
                         "config": self.record, **state}, self.folder / "checkpoint.pt")
        self._last_checkpoint = time.perf_counter()

    def finish(self, summary: dict) -> dict:
        """summary.json, the run's last file (a run folder holding it is finished), with the time taken."""
        seconds = self.elapsed()
        summary = {**summary, "unit": self.unit, "seconds": seconds,
                   f"{self.unit}s_per_second": self.total / seconds if seconds else None}
        if self.writes:
            atomic_write_text(self.folder / "summary.json", json.dumps(summary, indent=2))
        return summary

    # -- resume ------------------------------------------------------------------------------------------------------
    def _read_checkpoint(self) -> dict:
        """The run's checkpoint, checked: finite weights, and settings that equal this run's (keys recorded by older
        versions only, or new ones they lack, are not compared)."""
        path = self.folder / "checkpoint.pt"
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} does not exist (the run wrote no checkpoint yet)")
        state = load_file(path, map_location=self.device)
        saved = state.get("config") or {}
        if "world_size" in self.record and saved.get("world_size", 1) != self.record["world_size"]:
            raise CheckpointError(f"{path} was written by a run of {saved.get('world_size', 1)} process(es) and is "
                                  f"resumed by {self.record['world_size']}: resume it with the same number of "
                                  f"processes (torchrun --nproc-per-node and --nnodes), whose steps it continues "
                                  f"exactly")
        different = [k for k in self.record if k in saved and saved[k] != self.record[k]]
        if different:
            raise CheckpointError(f"{path} and {self.folder / 'config.json'} do not belong together: they differ "
                                  f"in {', '.join(different)}")
        check_finite_weights(state, str(path))
        return state
