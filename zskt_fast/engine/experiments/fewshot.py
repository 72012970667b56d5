"""The paper's few-shot baseline: knowledge distillation with attention transfer (KD+AT, Zagoruyko & Komodakis, 2017)
from the teacher to the student on M real images per class, with the fused loss ops.

Run folder: config.json, indices.json (the M-per-class images, by index in the training set), metrics.jsonl,
checkpoint.pt (atomic, every few minutes, on SIGINT/SIGTERM), student.pt, summary.json.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ...common import atomic_write_text
from ...data import dataset_labels, evaluation_loader, load_dataset
from ...models import build_classifier, pair_networks, unwrap
from ...ops import kd_at_loss
from ..lifecycle.checkpoint import CheckpointError, load_file, load_into, recorded_normalisation, save_classifier
from ..settings.config import FewShotConfig
from ..lifecycle.evaluation import evaluate
from ..settings.training import steps_per_epoch
from ..lifecycle.run import Run, check_run_folder
from ..lifecycle.schedules import cosine_lr
from ..settings.parts import Context, DATASET_DEFAULTS
from ..teachers import find_teacher, pretrain_missing_teacher

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


def train_kd_at(config: FewShotConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
                overwrite: bool = False, progress: bool = True,
                callbacks: Sequence[Callable[[int], None]] = ()) -> dict:
    """Trains the student by KD+AT on `samples_per_class` images per class into `run_dir` (or continues it from its
    checkpoint with `resume`, the folder's config.json then applying); returns the summary. `callbacks` are called as
    f(steps_done) after every step, before its checkpoint; one that raises ends the run as a kill would."""
    run_dir = Path(run_dir).expanduser().absolute()
    config = (_read_config(run_dir) if resume else config).resolved()
    try:
        teacher_path, must_pretrain = find_teacher(config.data, config.networks)
    except CheckpointError:
        _training_images(config.data, None)  # a missing or unreadable data set is the more basic error
        raise
    if not resume:
        check_run_folder(run_dir, FEWSHOT_FILES, overwrite=overwrite, create=False)
    if must_pretrain:
        pretrain_missing_teacher(config.networks, config.run, teacher_path, progress)
    teacher_file = load_file(teacher_path)
    data = config.data
    normalisation = (data.mean, data.std) if data.mean is not None else recorded_normalisation(teacher_file)
    train_set, where = _training_images(data, normalisation)
    config = config.resolved(Context(DATASET_DEFAULTS[data.dataset], torch.device(config.run.device),
                                     steps_per_epoch=steps_per_epoch(len(train_set), config.sgd.batch_size)))
    config.networks.teacher_ckpt = teacher_path
    labels = dataset_labels(train_set)
    indices = samples_per_class_indices(labels, config.kd.samples_per_class, config.run.seed,
                                        getattr(train_set, "classes", None))
    torch.manual_seed(config.run.seed)
    num_classes = int(labels.max()) + 1
    teacher, student = (build_classifier(arch, num_classes, data.channels)
                        for arch in (config.networks.teacher, config.networks.student))
    load_into(teacher, teacher_file, teacher_path, "teacher")
    run = Run(run_dir, name=f"KD+AT M={config.kd.samples_per_class}", unit="step", total=config.kd.iterations,
              files=FEWSHOT_FILES, folders=("tensorboard",), record=config.to_dict(), resume=resume,
              overwrite=overwrite, outputs=config.outputs, device=torch.device(config.run.device), progress=progress,
              advice="Lower the learning rate.")
    trainer = _KDAT(config, teacher, student, train_set, indices, run)
    loader = evaluation_loader(data.dataset, **where)
    with run:
        if not resume:
            atomic_write_text(run_dir / "indices.json", json.dumps(indices.tolist()))
        teacher_acc = evaluate(teacher, loader, run.device)
        trainer.train(loader, callbacks)
        run.checkpoint(run.total, trainer.state())
        student_acc = run.history[-1]["student_acc"]
        save_classifier(unwrap(trainer.student), run_dir / "student.pt", test_acc=student_acc,
                        arch=config.networks.student, dataset=data.dataset, teacher=config.networks.teacher,
                        method="kd+at", samples_per_class=config.kd.samples_per_class,
                        **({"normalisation": {"mean": list(normalisation[0]), "std": list(normalisation[1])}}
                           if normalisation is not None else {}))
        return run.finish({"method": "kd+at", "samples_per_class": config.kd.samples_per_class,
                           "seed": config.run.seed, "teacher": config.networks.teacher,
                           "student": config.networks.student, "dataset": data.dataset, "teacher_acc": teacher_acc,
                           "student_acc": student_acc, "iterations": run.total, "images": len(indices),
                           "history": run.history})


def _training_images(data, normalisation) -> tuple[Dataset, dict]:
    """The augmented training split, and where it (and the test split) is read from."""
    where = {"root": data.data_root, "download": data.download, "image_size": data.image_size,
             "channels": data.channels, "normalisation": normalisation}
    return load_dataset(data.dataset, train=True, augment=True, **where), where


class _KDAT:
    """The KD+AT training loop over the chosen images: its networks, optimiser and random draws."""

    def __init__(self, config: FewShotConfig, teacher, student, train_set, indices: torch.Tensor, run: Run):
        self.config, self.train_set, self.indices, self.run = config, train_set, indices, run
        for net in (teacher, student):
            net.to(run.device)
        self.teacher, self.student, _ = pair_networks(teacher, student, image_shape=config.data.image_shape,
                                                      attention=config.networks.attention_layers,
                                                      use_attention=config.kd.beta > 0)
        self.teacher.eval().requires_grad_(False)
        sgd = config.sgd
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=sgd.lr, momentum=sgd.momentum, nesterov=True,
                                         weight_decay=sgd.weight_decay)
        self.batches = torch.Generator().manual_seed(config.run.seed + 1)
        if run.state is not None:
            self.student.load_state_dict(run.state["student"])
            self.optimizer.load_state_dict(run.state["optimizer"])
            self.batches.set_state(run.state["batches"])
            torch.set_rng_state(run.state["rng"].cpu())

    def state(self) -> dict:
        return {"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "batches": self.batches.get_state(), "rng": torch.get_rng_state()}

    def step(self, step: int) -> torch.Tensor:
        """One SGD step on a batch drawn with replacement from the chosen images; returns the loss."""
        config, device = self.config, self.run.device
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(config.sgd.lr, step, self.run.total)
        picks = self.indices[torch.randint(len(self.indices), (config.sgd.batch_size,), generator=self.batches)]
        images, labels = zip(*(self.train_set[int(i)] for i in picks))
        images = torch.stack(images).to(device, non_blocking=True)
        labels = torch.as_tensor(labels, dtype=torch.long).to(device, non_blocking=True)
        with torch.no_grad():
            teacher_logits, teacher_features = self.teacher(images)
        logits, features = self.student(images)
        attention = config.kd.beta > 0
        loss = kd_at_loss(logits, teacher_logits, labels, features if attention else [],
                          teacher_features if attention else [], alpha=config.kd.alpha,
                          temperature=config.kd.temperature, beta=config.kd.beta, backend=config.kd.backend)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def train(self, test_batches, callbacks) -> None:
        run, outputs = self.run, self.config.outputs
        loss_sum, loss_count = torch.zeros((), device=run.device), 0
        self.student.train()
        for step in range(run.start, run.total):
            loss_sum += self.step(step)
            loss_count += 1
            done = step + 1
            if done % outputs.log_every == 0 or done % outputs.eval_every == 0 or done == run.total:
                values = {"loss": loss_sum.item() / loss_count, "lr": cosine_lr(self.config.sgd.lr, step, run.total)}
                if done % outputs.eval_every == 0 or done == run.total:
                    values["student_acc"] = evaluate(self.student, test_batches, run.device)
                    run.evaluated(done, values["student_acc"])
                record = run.log(done, values, check=("loss",))
                run.show(loss=f"{record['loss']:.3f}", **({"acc": f"{values['student_acc']:.1f}"}
                                                          if "student_acc" in values else {}))
                loss_sum.zero_()
                loss_count = 0
            for callback in callbacks:
                callback(done)
            run.iteration_done(done, self.state)


def _read_config(run_dir: Path) -> FewShotConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: no config.json there")
    return FewShotConfig.from_flat(json.loads(path.read_text()), source=str(path))
