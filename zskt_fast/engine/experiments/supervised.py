"""Supervised training of a classifier on labelled images (a teacher, or a student from scratch for comparison): SGD
with Nesterov momentum and weight decay, a cosine or step schedule per step."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...data import dataset_info, evaluation_loader, load_dataset
from ...models import build_classifier, classifier_logits
from ..lifecycle.checkpoint import save_classifier
from ..settings.config import PretrainConfig
from ..lifecycle.evaluation import evaluate
from ..lifecycle.run import Run
from ..lifecycle.schedules import cosine_lr, step_lr


def learning_rate(config: PretrainConfig, step: int, total_steps: int) -> float:
    schedule = cosine_lr if config.pretrain.schedule == "cosine" else step_lr
    return schedule(config.sgd.lr, step, total_steps)


def train_classifier(net: nn.Module, train_set: Dataset, test_batches, config: PretrainConfig,
                     progress: bool = True) -> dict:
    """Trains `net` (returning logits, or (logits, features)) with cross-entropy, by the epochs, SGD settings,
    schedule, seed and device of a resolved `config`; returns its test accuracy and the time taken."""
    sgd, device = config.sgd, torch.device(config.run.device)
    generator = torch.Generator().manual_seed(config.run.seed)
    loader = DataLoader(train_set, batch_size=sgd.batch_size, shuffle=True, drop_last=False, generator=generator,
                        num_workers=0 if len(train_set) < 10_000 else 4, pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(net.parameters(), lr=sgd.lr, momentum=sgd.momentum, nesterov=True,
                                weight_decay=sgd.weight_decay)
    epochs = config.pretrain.epochs
    total_steps, step = epochs * len(loader), 0
    net.to(device).train()
    run = Run(None, name="pretraining", unit="epoch", total=epochs, device=device, progress=progress,
              advice=f"Lower the learning rate (lr {sgd.lr}). Nothing was written.")
    with run:
        for epoch in range(epochs):
            loss_sum = torch.zeros((), device=device)
            for images, labels in loader:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step, total_steps)
                logits = classifier_logits(net(images.to(device, non_blocking=True)))
                loss = F.cross_entropy(logits, labels.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                step += 1
            record = run.log(epoch + 1, {"loss": loss_sum.item() / len(loader)}, check=("loss",))
            run.show(loss=f"{record['loss']:.4f}")
            run.iteration_done(epoch + 1, dict)
        return {"test_acc": evaluate(net, test_batches, device), "seconds": run.elapsed(), "steps": total_steps}


def train_supervised(config: PretrainConfig, out: str | os.PathLike, *, progress: bool = True) -> dict:
    """Trains `config.pretrain.arch` on the labelled training set of `config.data.dataset` and writes the classifier
    file that the trainer, the few-shot baseline and the MTE load (with its test accuracy and normalisation); returns
    that file's metadata."""
    config = config.resolved()
    data = config.data
    shape = {"image_size": data.image_size, "channels": data.channels}
    info = dataset_info(data.dataset, root=data.data_root, **shape)
    mean, std = (data.mean, data.std) if data.mean is not None else (info.mean, info.std)
    where = {"root": data.data_root, "download": data.download, "normalisation": (mean, std), **shape}
    train_set = load_dataset(data.dataset, train=True, augment=True, **where)
    loader = evaluation_loader(data.dataset, **where)
    torch.manual_seed(config.run.seed)
    net = build_classifier(config.pretrain.arch, info.num_classes, info.channels)
    result = train_classifier(net, train_set, loader, config, progress=progress)
    sgd = config.sgd
    metadata = {"arch": config.pretrain.arch, "dataset": data.dataset, "test_acc": result["test_acc"],
                "image_size": info.image_size, "channels": info.channels, "epochs": config.pretrain.epochs,
                "seed": config.run.seed, "normalisation": {"mean": list(mean), "std": list(std)},
                "recipe": f"SGD nesterov lr {sgd.lr} wd {sgd.weight_decay} {config.pretrain.schedule}, batch "
                          f"{sgd.batch_size}, augmentation {info.augmentation}"}
    save_classifier(net, out, **metadata)
    return {**metadata, "seconds": result["seconds"], "path": os.fspath(out)}
