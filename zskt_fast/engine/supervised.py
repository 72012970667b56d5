"""Supervised training of a teacher: SGD with Nesterov momentum and weight decay, cosine schedule per step."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from .progress import progress_bar

from ..data import evaluate


@dataclass
class SupervisedConfig:
    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "step": lr x 0.2 at 30%, 60% and 80% of the epochs
    seed: int = 0


def learning_rate(config: SupervisedConfig, step: int, total_steps: int) -> float:
    progress = step / max(total_steps, 1)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * 0.2 ** sum(progress >= m for m in (0.3, 0.6, 0.8))


def train_classifier(net: nn.Module, train_set: Dataset, test_batches, config: SupervisedConfig,
                     device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Trains `net` (returning (logits, features)) with cross-entropy; returns test accuracy and timing."""
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=False, generator=generator,
                        num_workers=0 if len(train_set) < 10_000 else 4, pin_memory=torch.device(device).type == "cuda")
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    total_steps, step = config.epochs * len(loader), 0
    net.to(device).train()
    start = time.perf_counter()
    bar = progress_bar(range(config.epochs), desc="pretraining", unit="epoch", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        loss_sum = torch.zeros((), device=device)
        for images, labels in loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, total_steps)
            logits = net(images.to(device, non_blocking=True))[0]
            loss = F.cross_entropy(logits, labels.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            step += 1
        bar.set_postfix(loss=f"{loss_sum.item() / len(loader):.4f}")
    accuracy = evaluate(net, test_batches, device)
    return {"test_acc": accuracy, "seconds": time.perf_counter() - start, "steps": total_steps}
