"""The paper's few-shot baseline: knowledge distillation with attention transfer (KD+AT, Zagoruyko & Komodakis, 2017)
from the teacher to the student on M real images per class, with the fused loss ops.

Run folder: config.json, indices.json (the M-per-class images, by index in the training set), metrics.jsonl,
checkpoint.pt (atomic, every few minutes, on SIGINT/SIGTERM), student.pt, summary.json.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..common import writable_folder
from ..data import dataset_labels, evaluation_loader, load_dataset
from ..models import build_classifier, pair_networks, unwrap
from ..ops import kd_at_loss
from .checkpoint import CheckpointError, atomic_save, check_finite, load_file, load_into, recorded_normalisation, \
    save_classifier
from .config import FewShotConfig
from .distill import RunInterrupted, _exclusive, _stop_requests, check_run_folder
from .evaluation import evaluate
from .metrics import MetricsLog
from .schedules import cosine_lr
from .trainer import find_teacher, pretrain_cached_teacher

FEWSHOT_FILES = ("config.json", "indices.json", "checkpoint.pt", "metrics.jsonl", "student.pt", "summary.json")


def samples_per_class_indices(labels: torch.Tensor, samples_per_class: str | int, seed: int,
                              class_names: list[str] | None = None) -> torch.Tensor:
    """Exactly M indices of each class, drawn without replacement with `seed` (the same for every call with that
    seed), sorted; 'all': every index. Raises ValueError naming the class when it has fewer than M images."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if str(samples_per_class) == "all":
        return torch.arange(len(labels))
    m = int(samples_per_class)
    counts = torch.bincount(labels)
    smallest = int(counts.argmin())
    if counts[smallest] < m:
        name = f" ({class_names[smallest]})" if class_names and smallest < len(class_names) else ""
        raise ValueError(f"class {smallest}{name}, the smallest, has {int(counts[smallest])} training images, fewer "
                         f"than the {m} per class asked for: samples_per_class can be at most "
                         f"{int(counts[smallest])} here")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(len(counts)):
        where = (labels == c).nonzero().flatten()
        chosen.append(where[torch.randperm(len(where), generator=generator)[:m]])
    return torch.cat(chosen).sort().values


def train_kd_at(config: FewShotConfig, run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                progress: bool = True, stop: int | None = None) -> dict:
    """Trains the student by KD+AT on `config.samples_per_class` images per class into `run_dir` (or continues it
    from its checkpoint with `resume`, the folder's config.json then applying); returns the summary. `stop` ends it
    after that many steps, as if killed there (tests)."""
    run_dir = Path(run_dir).expanduser().absolute()
    if resume:
        path = run_dir / "config.json"
        if not path.is_file():
            raise CheckpointError(f"cannot resume {run_dir}: no config.json there")
        config = FewShotConfig(**json.loads(path.read_text()))
    config = config.resolved()
    teacher_path, pretrain_first = find_teacher(config)
    if not resume:
        check_run_folder(run_dir, overwrite=overwrite, create=False)
    if pretrain_first:
        pretrain_cached_teacher(config, teacher_path, progress)
    teacher_file = load_file(teacher_path)
    mean, std = recorded_normalisation(teacher_file) or (None, None)
    shape = {"root": config.data_root, "image_size": config.image_size, "channels": config.channels,
             "normalisation": (mean, std) if mean is not None else None}
    train_set = load_dataset(config.dataset, train=True, download=config.download, augment=True, **shape)
    config = config.resolved(train_size=len(train_set))
    config.teacher_ckpt = teacher_path
    loader = evaluation_loader(config.dataset, download=config.download, **shape)
    labels = dataset_labels(train_set)
    indices = samples_per_class_indices(labels, config.samples_per_class, config.seed,
                                        getattr(train_set, "classes", None))
    torch.manual_seed(config.seed)
    num_classes = int(labels.max()) + 1
    teacher = build_classifier(config.teacher, num_classes, config.channels)
    student = build_classifier(config.student, num_classes, config.channels)
    load_into(teacher, teacher_file, teacher_path, "teacher")
    device = torch.device(config.device)
    for net in (teacher, student):
        net.to(device)
    image_shape = (config.channels, config.image_size, config.image_size)
    teacher, student, _ = pair_networks(teacher, student, image_shape=image_shape, use_attention=config.beta > 0)
    teacher.eval().requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    batches = torch.Generator().manual_seed(config.seed + 1)
    start, history, elapsed_before = 0, [], 0.0
    if resume:
        state = load_file(run_dir / "checkpoint.pt", map_location=device)
        check_finite(state["student"], f"{run_dir / 'checkpoint.pt'} (student)")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        batches.set_state(state["batches"])
        torch.set_rng_state(state["rng"].cpu())
        start, history, elapsed_before = state["iteration"], state["history"], state["elapsed"]
    writable_folder(run_dir, "run folder")
    with _exclusive(run_dir):
        if not resume:
            for name in FEWSHOT_FILES:
                (run_dir / name).unlink(missing_ok=True)
            (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            (run_dir / "indices.json").write_text(json.dumps(indices.tolist()))
        return _train(config, teacher, student, optimizer, train_set, indices, batches, loader, device, run_dir,
                      start, history, elapsed_before, progress, stop, mean, std)


def _train(config, teacher, student, optimizer, train_set, indices, batches, loader, device, run_dir, start, history,
           elapsed_before, progress, stop, mean, std) -> dict:
    log = MetricsLog(run_dir / "metrics.jsonl", keep_until=start if start else None)
    teacher_acc = evaluate(teacher, loader, device)
    clock = {"start": time.perf_counter(), "checkpoint": time.perf_counter()}
    loss_sum, loss_count = torch.zeros((), device=device), 0
    student.train()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - clock["start"]

    def checkpoint(next_iteration: int) -> None:
        atomic_save({"iteration": next_iteration, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                     "batches": batches.get_state(), "rng": torch.get_rng_state(), "history": history,
                     "elapsed": elapsed()}, run_dir / "checkpoint.pt")
        clock["checkpoint"] = time.perf_counter()

    bar = tqdm(total=config.iterations, initial=start, desc=f"KD+AT M={config.samples_per_class}", unit="step",
               disable=not progress, dynamic_ncols=True)
    end = config.iterations if stop is None else min(stop, config.iterations)
    try:
        with _stop_requests() as stop_requested:
            for step in range(start, end):
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(config.lr, step, config.iterations)
                picks = indices[torch.randint(len(indices), (config.batch_size,), generator=batches)]
                images, labels = zip(*(train_set[int(i)] for i in picks))
                images = torch.stack(images).to(device, non_blocking=True)
                labels = torch.as_tensor(labels, dtype=torch.long).to(device, non_blocking=True)
                with torch.no_grad():
                    teacher_logits, teacher_features = teacher(images)
                logits, features = student(images)
                loss = kd_at_loss(logits, teacher_logits, labels, features if config.beta > 0 else [],
                                  teacher_features if config.beta > 0 else [], alpha=config.alpha,
                                  temperature=config.temperature, beta=config.beta, backend=config.backend)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                loss_count += 1
                bar.update(1)
                done = step + 1
                if done % config.eval_every == 0 or done == config.iterations:
                    mean_loss = loss_sum.item() / loss_count
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"KD+AT diverged: non-finite loss by step {done}; lower the learning "
                                                 f"rate")
                    accuracy = evaluate(student, loader, device)
                    history.append({"iteration": done, "student_acc": accuracy})
                    log.write({"iteration": done, "loss": mean_loss, "lr": cosine_lr(config.lr, step,
                                                                                      config.iterations),
                               "student_acc": accuracy})
                    bar.set_postfix({"loss": f"{mean_loss:.3f}", "acc": f"{accuracy:.1f}"})
                    loss_sum.zero_()
                    loss_count = 0
                due = time.perf_counter() - clock["checkpoint"] >= 60 * config.checkpoint_minutes
                if (due or stop_requested) and done < config.iterations:
                    checkpoint(done)
                if stop_requested and done < config.iterations:
                    raise RunInterrupted(stop_requested["signal"], run_dir, done)
    finally:
        bar.close()
        log.close()
    if end < config.iterations:
        checkpoint(end)
        return {"stopped_at": end}
    checkpoint(config.iterations)
    student_acc = history[-1]["student_acc"]
    save_classifier(unwrap(student), run_dir / "student.pt", test_acc=student_acc, arch=config.student,
                    dataset=config.dataset, teacher=config.teacher, method="kd+at",
                    samples_per_class=config.samples_per_class,
                    **({"normalisation": {"mean": list(mean), "std": list(std)}} if mean is not None else {}))
    seconds = elapsed()
    summary = {"method": "kd+at", "samples_per_class": config.samples_per_class, "seed": config.seed,
               "teacher": config.teacher, "student": config.student, "dataset": config.dataset,
               "teacher_acc": teacher_acc, "student_acc": student_acc, "iterations": config.iterations,
               "images": len(indices), "seconds": seconds, "history": history}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
