"""What every data-free run reports while it trains and writes when it ends, whichever loop it runs: the metrics log,
the student's tests, image grids, callbacks and checkpoints after each iteration (Algorithm 1) or round (the pool
methods); student.pt, generator.pt and summary.json at the end.

A loop brings a `Trainee`: its networks, the metrics of its last iterations, its image grid and its checkpoint state.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ...models import unwrap
from .checkpoint import save_classifier, save_generator
from .evaluation import as_batches, evaluate
from .metrics import save_image_grid
from .run import Run

Callback = Callable[[int, dict], None]


class Trainee(Protocol):
    """What a loop shows the reporter."""
    teacher: nn.Module
    student: nn.Module            # the network trained
    tested_student: nn.Module     # the one tested and written to student.pt: the student, or its weight average
    generator: nn.Module | None   # written to generator.pt; None: the method has none (DeepInversion)
    grid_prefix: str              # images/PREFIX_NNNNNN.png

    def collect(self, outputs: dict) -> None:
        """Takes one iteration's outputs into the metrics of the next log record."""

    def metrics(self, iteration: int, outputs: dict) -> tuple[dict, dict[str, str]]:
        """The log record's values (every rank's mean), and {loss: its name on the progress bar} of the losses that
        must be finite."""

    def grid(self) -> tuple[torch.Tensor, tuple, tuple]:
        """Images to show, with the (mean, std) that un-normalise them."""

    def note(self) -> str:
        """What the evaluation line adds after the accuracies."""

    def state_dict(self) -> dict:
        """The checkpoint's part of the loop."""

    def write_final(self, folder: Path) -> None:
        """Writes the loop's own final files (besides student.pt and generator.pt)."""

    def summary(self) -> dict:
        """What the loop adds to summary.json."""


class Reporter:
    """Reports a run of `trainee` in `run` (tests on `test_data` every eval_every, a log record every log_every)."""

    def __init__(self, run: Run, trainee: Trainee, config, test_data, normalisation,
                 callbacks: Sequence[Callback]):
        self.run, self.trainee, self.config, self.callbacks = run, trainee, config, callbacks
        self.normalisation = normalisation
        self.loader = as_batches(test_data) if test_data is not None and run.is_writer else None
        self.teacher_acc = evaluate(trainee.teacher, self.loader, run.device) if self.loader is not None else None
        self.student_acc = run.history[-1]["student_acc"] if run.history else None

    def after(self, index: int, outputs: dict) -> None:
        """After iteration (or round) `index`, counted from 0."""
        done, every = index + 1, self.config.outputs
        self.trainee.collect(outputs)
        evaluate_now = done % every.eval_every == 0 or done == self.config.loop.iterations
        if done % every.log_every == 0 or evaluate_now:
            values, shown = self.trainee.metrics(index, outputs)
            if evaluate_now:
                values.update(self._evaluate(done))
            record = self.run.log(done, values, check=tuple(shown))
            self.run.show(**{short: f"{record[name]:.3f}" for name, short in shown.items()},
                          **({"acc": f"{self.student_acc:.1f}"} if self.student_acc is not None else {}))
        for callback in self.callbacks:
            callback(done, outputs)
        self.run.iteration_done(done, self.trainee.state_dict)

    def _evaluate(self, done: int) -> dict:
        """The student's test accuracy (with test data) and an image grid (with a run folder)."""
        values = {}
        if self.loader is not None:
            self.student_acc = evaluate(self.trainee.tested_student, self.loader, self.run.device)
            self.run.evaluated(done, self.student_acc)
            values["student_acc"] = self.student_acc
            self.run.say(f"{self.run.unit} {done}/{self.config.loop.iterations}: student test accuracy "
                         f"{self.student_acc:.2f}% (teacher {self.teacher_acc:.2f}%){self.trainee.note()}")
        if self.run.writes:
            images, mean, std = self.trainee.grid()
            save_image_grid(images, self.run.folder / "images" / f"{self.trainee.grid_prefix}_{done:06d}.png",
                            mean=mean, std=std)
        return values

    def finish(self, names: dict, pairs) -> dict:
        """The last checkpoint, student.pt, generator.pt (for a method with a generator) and the summary."""
        run, config, trainee = self.run, self.config, self.trainee
        run.checkpoint(config.loop.iterations, trainee.state_dict())
        if trainee.tested_student is not trainee.student:  # the run's student is the weight average
            trainee.student.load_state_dict(trainee.tested_student.state_dict())
        if run.writes:
            mean, std = self.normalisation
            save_classifier(unwrap(trainee.tested_student), run.folder / "student.pt", test_acc=self.student_acc,
                            arch=names["student"], dataset=names["dataset"], teacher=names["teacher"],
                            normalisation={"mean": list(mean), "std": list(std)})
            if trainee.generator is not None:
                save_generator(trainee.generator, run.folder / "generator.pt")
            trainee.write_final(run.folder)
        steps = config.steps
        return run.finish({**names, "method": config.objectives.method, "teacher_acc": self.teacher_acc,
                           "student_acc": self.student_acc, "iterations": config.loop.iterations,
                           "device": str(run.device), "amp": steps.amp, "cuda_graphs": steps.cuda_graphs,
                           "backend": steps.backend, "attention_pairs": pairs, **trainee.summary(),
                           "history": run.history})
