"""Test accuracy of a classifier."""
from __future__ import annotations

import torch

from ..common import eval_mode


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent of a classifier returning (logits, features), in eval mode; restores its mode."""
    correct = total = 0
    with eval_mode(net):
        for images, labels in loader:
            logits = net(images.to(device, non_blocking=True))[0]
            correct += (logits.argmax(1).cpu() == labels).sum().item()
            total += labels.numel()
    return 100.0 * correct / max(total, 1)
