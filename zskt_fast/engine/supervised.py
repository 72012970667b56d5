"""Supervised training of a teacher: SGD with Nesterov momentum and weight decay, cosine schedule per step."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..models import classifier_logits
from .config import PretrainConfig
from .evaluation import evaluate
from .schedules import cosine_lr, step_lr


def learning_rate(config: PretrainConfig, step: int, total_steps: int) -> float:
    schedule = cosine_lr if config.schedule == "cosine" else step_lr
    return schedule(config.lr, step, total_steps)


def train_classifier(net: nn.Module, train_set: Dataset, test_batches, config: PretrainConfig,
                     device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Trains `net` (returning logits, or (logits, features)) with cross-entropy, by the epochs, lr, batch size,
    momentum, weight decay, schedule and seed of a resolved `config`; returns test accuracy and timing."""
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=False, generator=generator,
                        num_workers=0 if len(train_set) < 10_000 else 4, pin_memory=torch.device(device).type == "cuda")
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    total_steps, step = config.epochs * len(loader), 0
    net.to(device).train()
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="pretraining", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
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
        mean_loss = loss_sum.item() / len(loader)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"pretraining diverged: the loss of epoch {epoch + 1} is {mean_loss}; lower the "
                                     f"learning rate (lr {config.lr}). Nothing was written.")
        bar.set_postfix(loss=f"{mean_loss:.4f}")
    accuracy = evaluate(net, test_batches, device)
    return {"test_acc": accuracy, "seconds": time.perf_counter() - start, "steps": total_steps}
