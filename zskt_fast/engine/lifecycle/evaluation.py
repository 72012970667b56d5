"""Test accuracy of a classifier, and test data given in any of the usual forms."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ...common import eval_mode
from ...models import classifier_logits


def as_batches(data, batch_size: int = 500):
    """(images, labels) batches from a DataLoader or any iterable of batches (kept as it is), a Dataset, or an
    (images, labels) pair of tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(f"test data: expected images [N, C, H, W] and labels [N], got shapes "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    if hasattr(data, "__iter__"):
        return data
    raise ValueError(f"test data: expected a DataLoader, a Dataset or an (images, labels) pair of tensors, got "
                     f"{type(data).__name__}")


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent of a classifier returning logits or (logits, features), in eval mode; restores its
    mode. The global random state is left as it was (a DataLoader draws a seed from it), so that testing during
    training does not change what training draws next, and a resumed run draws what an uninterrupted one does."""
    correct = total = 0
    with eval_mode(net), torch.random.fork_rng(devices=[]):
        for images, labels in loader:
            logits = classifier_logits(net(images.to(device, non_blocking=True)))
            correct += (logits.argmax(1).cpu() == labels).sum().item()
            total += labels.numel()
    return 100.0 * correct / max(total, 1)
