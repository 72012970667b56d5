"""python -m zskt_fast.toy: zero-shot knowledge transfer in two dimensions, where it can be watched.

A small MLP teacher learns interleaved spirals; an MLP student that never sees them and an MLP generator from noise to
points then play Algorithm 1, with the same loop and loss ops as the image trainer (KL only: no attention features).
The generated points gather where student and teacher disagree, along the teacher's decision boundaries, and the
student's regions move onto the teacher's. Writes toy.png (snapshots), toy.gif (when Pillow is installed) and
agreement.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tqdm import tqdm

from ._cli import add_options, errors_as_messages, program_parser, settings_from_args
from .common import (atomic_write, atomic_write_text, check_count, eval_mode, left_as_found, option,
                     writable_folder)
from .engine.settings.config import Composed
from .engine.settings.parts import Context
from .engine.settings.zero_shot import ObjectiveSettings, StepSettings
from .engine.loops.loop import zero_shot_knowledge_transfer
from .engine.methods.generator_strategy import algorithm_one_steps
from .models.mlp import MLPClassifier, MLPGenerator

GRID = 160          # grid points per axis for the decision regions and the agreement
EXTENT = 1.45       # the plotted square is [-EXTENT, EXTENT]^2; the spirals lie within about [-1.2, 1.2]^2


def make_spirals(num_classes: int = 3, points_per_class: int = 300, *, noise: float | None = None,
                 turns: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved spiral arms in the plane, one per class, for the two-dimensional demonstration: ([N, 2] points in
    about [-1, 1]^2, [N] labels). The default noise, 0.25 / num_classes, shrinks with the gap between arms."""
    if num_classes < 2 or points_per_class < 1:
        raise ValueError(f"need at least 2 classes and 1 point per class, got {num_classes} and {points_per_class}")
    noise = 0.25 / num_classes if noise is None else noise
    gen = torch.Generator().manual_seed(seed)
    radius = torch.linspace(0.1, 1.0, points_per_class)
    points, labels = [], []
    for c in range(num_classes):
        angle = 2 * torch.pi * (turns * radius + c / num_classes)
        arm = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
        points.append(arm + noise * torch.randn(points_per_class, 2, generator=gen))
        labels.append(torch.full((points_per_class,), c, dtype=torch.long))
    return torch.cat(points), torch.cat(labels)


def train_teacher(points: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 1500,
                  seed: int = 0) -> MLPClassifier:
    """Full-batch Adam on cross-entropy with a cosine schedule; wide enough to fit the spirals exactly."""
    torch.manual_seed(seed)
    teacher = MLPClassifier(num_classes=num_classes, hidden=128, depth=3)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = F.cross_entropy(teacher(points)[0], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return teacher.eval()


def grid_points(n: int = GRID) -> torch.Tensor:
    axis = torch.linspace(-EXTENT, EXTENT, n)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1)


@torch.no_grad()
def predict(net, points: torch.Tensor) -> torch.Tensor:
    with eval_mode(net):
        return net(points)[0].argmax(1)


def run_toy(*, num_classes: int = 3, iterations: int = 2000, seed: int = 0, snapshots: int = 6,
            batch_size: int = 256, n_student_steps: int = 5, generator_lr: float = 1e-3, student_lr: float = 2e-3,
            z_dim: int = 8, progress: bool = True) -> dict:
    """Trains the teacher, then runs Algorithm 1; returns the data, the networks, the snapshots and the agreement."""
    points, labels = make_spirals(num_classes, seed=seed)
    teacher = train_teacher(points, labels, num_classes, seed=seed)
    teacher_acc = (predict(teacher, points) == labels).float().mean().item()
    torch.manual_seed(seed)
    student = MLPClassifier(num_classes=num_classes, hidden=64, depth=2)
    generator = MLPGenerator(z_dim=z_dim)
    settings = StepSettings(batch_size=batch_size, z_dim=z_dim, generator_lr=generator_lr, student_lr=student_lr,
                            beta=0.0, backend="auto", amp="off", channels_last=False, compile="off")
    cpu = torch.device("cpu")
    steps = algorithm_one_steps(teacher, student, generator, ObjectiveSettings().resolved(),
                                settings.resolved(Context(device=cpu)), device=cpu, seed=seed)
    grid = grid_points()
    teacher_grid = predict(teacher, grid)
    moments = sorted({round(i * iterations / (snapshots - 1)) for i in range(snapshots)}) if snapshots > 1 \
        else [iterations]
    frames = []

    def snapshot(done: int, generated: torch.Tensor) -> None:
        student_grid = predict(student, grid)
        frames.append({"iteration": done, "student_grid": student_grid, "points": generated.detach().clone(),
                       "grid_agreement": (student_grid == teacher_grid).float().mean().item(),
                       "data_agreement": (predict(student, points) == predict(teacher, points)).float().mean().item()})

    if 0 in moments:
        with torch.no_grad():
            snapshot(0, generator.eval()(torch.randn(batch_size, z_dim, generator=torch.Generator().manual_seed(seed))))
        generator.train()
    bar = tqdm(total=iterations, desc="toy", unit="it", disable=not progress, dynamic_ncols=True)

    def on_iteration_end(iteration: int, outputs: dict) -> None:
        bar.update(1)
        if iteration + 1 in moments:
            snapshot(iteration + 1, outputs["images"])
            bar.set_postfix(agreement=f"{frames[-1]['data_agreement']:.3f}")

    zero_shot_knowledge_transfer(steps, iterations=iterations, n_generator_steps=1, n_student_steps=n_student_steps,
                                 on_iteration_end=on_iteration_end)
    bar.close()
    return {"points": points, "labels": labels, "grid": grid, "teacher_grid": teacher_grid, "frames": frames,
            "teacher_acc": teacher_acc, "student": student, "teacher": teacher,
            "grid_agreement": frames[-1]["grid_agreement"], "data_agreement": frames[-1]["data_agreement"]}


def _draw(ax, result, regions, frame, title, show_data):
    import numpy as np
    cmap = "tab10"
    image = regions.view(GRID, GRID).numpy()
    ax.imshow(image, origin="lower", extent=(-EXTENT, EXTENT, -EXTENT, EXTENT), cmap=cmap, alpha=0.35,
              vmin=0, vmax=9, interpolation="nearest")
    if show_data:
        ax.scatter(result["points"][:, 0], result["points"][:, 1], c=result["labels"].numpy(), cmap=cmap, vmin=0,
                   vmax=9, s=2, alpha=0.45, linewidths=0)
    generated = np.clip(frame["points"].numpy(), -EXTENT, EXTENT)
    ax.scatter(generated[:, 0], generated[:, 1], c="black", marker="x", s=7, linewidths=0.6)
    ax.set_xlim(-EXTENT, EXTENT)
    ax.set_ylim(-EXTENT, EXTENT)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def save_figures(result: dict, out: Path) -> list[str]:
    """toy.png: teacher (top) and student (bottom) at each snapshot; toy.gif: the same, one frame per snapshot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    frames = result["frames"]
    fig, axes = plt.subplots(2, len(frames), figsize=(2.2 * len(frames), 4.6), dpi=110, squeeze=False)
    for column, frame in enumerate(frames):
        _draw(axes[0, column], result, result["teacher_grid"], frame,
              f"teacher + data, iteration {frame['iteration']}", True)
        _draw(axes[1, column], result, frame["student_grid"], frame,
              f"student: agrees on {100 * frame['data_agreement']:.0f}% of data", False)
    fig.suptitle("zero-shot knowledge transfer in 2-D: regions, data (dots), generated points (x)", fontsize=9)
    fig.tight_layout()
    atomic_write(out / "toy.png", lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    written = ["toy.png"]
    try:
        from PIL import Image
    except ImportError:
        return written
    images = []
    for frame in frames:
        fig, axes = plt.subplots(1, 2, figsize=(6, 3.2), dpi=90)
        _draw(axes[0], result, result["teacher_grid"], frame, f"teacher, iteration {frame['iteration']}", True)
        _draw(axes[1], result, frame["student_grid"], frame,
              f"student: {100 * frame['data_agreement']:.0f}% agreement on data", False)
        fig.tight_layout()
        fig.canvas.draw()
        images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
        plt.close(fig)
    atomic_write(out / "toy.gif", lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                          duration=700, loop=0))
    written.append("toy.gif")
    return written


@dataclass
class ToySettings:
    """The two-dimensional demonstration."""
    classes: int = option(3, "number of spiral arms (classes), 2 to 10")
    iterations: int = option(2000, "iterations of Algorithm 1")
    n_student_steps: int = option(5, "student steps per iteration")
    snapshots: int = option(6, "moments of training drawn")
    seed: int = option(0, "seed of the data, the networks and the noise")

    def resolved(self, context=None) -> ToySettings:
        check_count(self.classes, "--classes", minimum=2, maximum=10)
        for name in ("iterations", "n_student_steps", "snapshots"):
            check_count(getattr(self, name), "--" + name.replace("_", "-"))
        check_count(self.seed, "--seed", minimum=0)
        return dataclasses.replace(self)


@dataclass
class ToyConfig(Composed):
    toy: ToySettings = dataclasses.field(default_factory=ToySettings)


def build_parser() -> argparse.ArgumentParser:
    p = program_parser(
        "toy",
        "Zero-shot knowledge transfer on 2-D spirals: a teacher MLP trained on them, a student MLP that "
        "never sees them and a generator of points, trained with Algorithm 1 and the package's KL op. "
        "Writes toy.png, toy.gif (with Pillow) and agreement.json to --out.")
    add_options(p, ToyConfig)
    p.add_argument("--out", default="runs/toy", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with errors_as_messages(parser, debug=args.debug):
        settings = settings_from_args(ToyConfig, args).toy.resolved()
        with left_as_found(args.out):
            out = writable_folder(args.out)
            start = time.perf_counter()
            result = run_toy(num_classes=settings.classes, iterations=settings.iterations, seed=settings.seed,
                             snapshots=settings.snapshots, n_student_steps=settings.n_student_steps,
                             progress=not args.no_progress)
            written = save_figures(result, out)
            chance = 1 / settings.classes
            summary = {"classes": settings.classes, "iterations": settings.iterations, "seed": settings.seed,
                       "teacher_accuracy_on_data": result["teacher_acc"], "agreement_on_data": result["data_agreement"],
                       "agreement_on_grid": result["grid_agreement"], "chance": chance,
                       "snapshots": [{k: f[k] for k in ("iteration", "data_agreement", "grid_agreement")}
                                     for f in result["frames"]],
                       "seconds": time.perf_counter() - start}
            atomic_write_text(out / "agreement.json", json.dumps(summary, indent=2))
            written.append("agreement.json")
    print(f"teacher accuracy on the spirals {100 * result['teacher_acc']:.1f}%; student agrees with the teacher on "
          f"{100 * result['data_agreement']:.1f}% of the data and {100 * result['grid_agreement']:.1f}% of the "
          f"plane (chance {100 * chance:.0f}%); {summary['seconds']:.0f} s; wrote {', '.join(written)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
