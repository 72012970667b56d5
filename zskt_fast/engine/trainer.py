"""One zero-shot run: builds the networks, resumes if asked, runs Algorithm 1 and writes the run folder.

Run folder: config.json (resolved settings), metrics.jsonl, checkpoint.pt (atomic, every few minutes and at the end),
images/iter_NNNNNN.png at each evaluation, student.pt and generator.pt, summary.json.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..common import eval_mode
from ..data import dataset_info, evaluation_loader
from ..models import Generator, build_classifier, check_pairable
from .checkpoint import CheckpointError, atomic_save, check_finite, load_file, load_weights, save_classifier
from .config import PretrainConfig, TrainConfig
from .evaluation import evaluate
from .loop import zero_shot_knowledge_transfer
from .metrics import MetricsLog, save_image_grid
from .schedules import cosine_lr
from .steps import GraphedZSKTSteps, ZSKTSteps
from .teachers import default_teacher_path, pretrain_teacher

GRID_SAMPLES = 64


def resolve_teacher_checkpoint(config: TrainConfig, progress: bool = True) -> str:
    """The teacher file to load: --teacher-ckpt, else the cached pretrained one; for digits a missing cache entry is
    trained on the spot (seconds), for CIFAR-10 and SVHN it is an error that says how to make one."""
    if config.teacher_ckpt:
        if not os.path.isfile(config.teacher_ckpt):
            raise CheckpointError(f"teacher checkpoint not found: {config.teacher_ckpt}")
        return config.teacher_ckpt
    cached = default_teacher_path(config.dataset, config.teacher)
    if cached.is_file():
        return str(cached)
    if config.dataset != "digits":
        raise CheckpointError(
            f"no teacher checkpoint: pass --teacher-ckpt PATH (the authors' released last.pth.tar files load as they "
            f"are), or train one with `python -m zskt_fast.pretrain --dataset {config.dataset} --arch "
            f"{config.teacher}`, which writes {cached}, where this command looks")
    print(f"pretraining the {config.teacher} teacher on digits (first use; cached at {cached})")
    result = pretrain_teacher(PretrainConfig(dataset="digits", arch=config.teacher, device=config.device), cached,
                              progress=progress)
    print(f"teacher test accuracy {result['test_acc']:.2f}% ({result['seconds']:.0f} s)")
    return str(cached)


class _Accumulator:
    """Sums of the per-iteration metrics on the device, read (one host synchronisation) only when logged."""

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


def train(config: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          stop: int | None = None) -> dict:
    """Runs (or resumes) one seed of zero-shot knowledge transfer into `run_dir`; returns the summary.

    `stop` ends the run after that many iterations of the schedule (as if it were killed there), for tests."""
    run_dir = Path(run_dir)
    if resume:
        saved = json.loads((run_dir / "config.json").read_text())
        config = TrainConfig.from_dict(saved)
    config = config.resolved()
    info = dataset_info(config.dataset)
    device = torch.device(config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / "checkpoint.pt"
    if resume and not checkpoint_path.is_file():
        raise CheckpointError(f"cannot resume: {checkpoint_path} does not exist (the run wrote no checkpoint yet)")

    # Before any work: a missing data set is reported at once.
    loader = evaluation_loader(config.dataset, root=config.data_root, download=config.download)
    teacher_path = resolve_teacher_checkpoint(config, progress)
    torch.manual_seed(config.seed)
    teacher = build_classifier(config.teacher, info.num_classes, info.channels)
    student = build_classifier(config.student, info.num_classes, info.channels)
    generator = Generator(config.z_dim, info.image_size, info.channels)
    load_weights(teacher, teacher_path, what="teacher")
    check_pairable(teacher, student, in_channels=info.channels, image_size=info.image_size,
                   attention=config.beta > 0)
    for net in (teacher, student, generator):
        net.to(device)
    if not resume:
        (run_dir / "config.json").write_text(json.dumps({**config.to_dict(), "teacher_ckpt": teacher_path}, indent=2))

    teacher_acc = evaluate(teacher, loader, device)
    steps_class = GraphedZSKTSteps if config.cuda_graphs else ZSKTSteps
    steps = steps_class(teacher, student, generator, config.step_settings(), device, seed=config.seed)

    start, history, elapsed_before = 0, [], 0.0
    if resume:
        state = load_file(checkpoint_path, map_location=device)
        for part in ("student", "generator"):
            check_finite(state["steps"][part], f"{checkpoint_path} ({part})")
        steps.load_state_dict(state["steps"])
        start, history, elapsed_before = state["iteration"], state["history"], state["elapsed"]
    if config.cuda_graphs:
        steps.set_learning_rates(start, config.iterations)
        steps.capture()

    grid_z = torch.randn(GRID_SAMPLES, config.z_dim, generator=torch.Generator().manual_seed(config.seed + 1))
    log = MetricsLog(run_dir / "metrics.jsonl", keep_until=start if resume else None,
                     tensorboard_dir=str(run_dir / "tensorboard") if config.tensorboard else None)
    accumulator = _Accumulator(device)
    bar = tqdm(total=config.iterations, initial=start, desc="zero-shot", unit="it", disable=not progress,
               dynamic_ncols=True)
    clock = {"run_start": time.perf_counter(), "window": time.perf_counter(), "checkpoint": time.perf_counter()}
    student_acc = history[-1]["student_acc"] if history else float("nan")

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - clock["run_start"]

    def write_checkpoint(next_iteration: int) -> None:
        atomic_save({"iteration": next_iteration, "steps": steps.state_dict(), "history": history,
                     "elapsed": elapsed(), "config": config.to_dict()}, checkpoint_path)
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
                      "seconds_per_iteration": (now - clock["window"]) / max(done - clock.get("window_it", start), 1)}
            clock["window"], clock["window_it"] = now, done
            if not all(math.isfinite(record[k]) for k in ("loss_generator", "loss_student")):
                raise FloatingPointError(
                    f"training diverged: non-finite loss by iteration {done} (generator {record['loss_generator']}, "
                    f"student {record['loss_student']}); the last checkpoint in {run_dir} predates it. Lower the "
                    f"learning rates, or try --amp off.")
        if done % config.eval_every == 0 or done == config.iterations:
            student_acc = evaluate(student, loader, device)
            history.append({"iteration": done, "student_acc": student_acc})
            record["student_acc"] = student_acc
            with torch.no_grad(), eval_mode(generator):
                images = generator(grid_z.to(device))
            save_image_grid(images, run_dir / "images" / f"iter_{done:06d}.png", mean=info.mean, std=info.std)
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
        if due and done < config.iterations:
            write_checkpoint(done)

    try:
        zero_shot_knowledge_transfer(steps, iterations=config.iterations, n_generator_steps=config.n_generator_steps,
                                     n_student_steps=config.n_student_steps, start=start, stop=stop,
                                     on_iteration_end=on_iteration_end)
    finally:
        bar.close()
        log.close()
    finished = stop is None or stop >= config.iterations
    if not finished:
        return {"stopped_at": stop}
    write_checkpoint(config.iterations)
    metadata = {"arch": config.student, "dataset": config.dataset, "teacher": config.teacher}
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
