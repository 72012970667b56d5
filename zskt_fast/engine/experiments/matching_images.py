"""The images transition curves start from: the first N on which networks A and B predict the same class, in the
data's order or a seeded random order, with their source class (the common prediction, or the label)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ...common import check_choice, eval_mode
from ...models import classifier_logits
from ..settings.comparison import SOURCES



def logits_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return classifier_logits(net(x))


def image_batches(data) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """(images, labels or None) from a tensor, an (images, labels) pair, or an iterable of (images, labels) / images
    batches."""
    if isinstance(data, torch.Tensor):
        yield data, None
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor) and \
            isinstance(data[1], torch.Tensor) and data[0].dim() >= 2:
        yield data[0], data[1]
        return
    for batch in data:
        if isinstance(batch, (tuple, list)):
            yield batch[0], batch[1] if len(batch) > 1 else None
        else:
            yield batch, None


def _in_order(data, shuffle_seed: int | None) -> Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """(images, labels, positions in the data) batches: in the data's order, or, with `shuffle_seed`, all images in
    the order of torch.randperm seeded with it."""
    if shuffle_seed is None:
        seen = 0
        for images, labels in image_batches(data):
            yield images, labels, torch.arange(seen, seen + len(images))
            seen += len(images)
        return
    parts = list(image_batches(data))
    images = torch.cat([p[0] for p in parts])
    labels = None if any(p[1] is None for p in parts) else torch.cat([p[1] for p in parts])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(shuffle_seed))
    yield images[order], None if labels is None else labels[order], order


@torch.no_grad()
def select_matching_images(net_a: nn.Module, net_b: nn.Module, data, n_images: int, device,
                           batch_size: int = 500, *, source: str = "agreed",
                           shuffle_seed: int | None = None, allow_fewer: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `n_images` images (in the order given, or a seeded random order) on which A and B predict the same
    class: (images, their source class, their positions in the data). The source class is that prediction
    (source="agreed", the paper's Algorithm 2) or the data set's label (source="label", the authors' code). Raises
    ValueError saying how many were found when too few."""
    check_choice(source, SOURCES, "source")
    chosen, classes, indices, seen = [], [], [], 0
    with eval_mode(net_a, net_b):
        for batch, labels, positions in _in_order(data, shuffle_seed):
            if source == "label" and labels is None:
                raise ValueError("source 'label' needs labels: give (images, labels) or a loader of such batches")
            for start in range(0, len(batch), batch_size):
                x = batch[start:start + batch_size].to(device)
                pred_a, pred_b = logits_of(net_a, x).argmax(1), logits_of(net_b, x).argmax(1)
                match = (pred_a == pred_b).nonzero().flatten()
                chosen.append(x[match].cpu())
                source_class = pred_a[match].cpu() if source == "agreed" else labels[start:start + batch_size][
                    match.cpu()].long()
                classes.append(source_class)
                indices.append(positions[start:start + batch_size][match.cpu()])
                if sum(len(c) for c in classes) >= n_images:
                    break
            seen += len(batch)
            if sum(len(c) for c in classes) >= n_images:
                break
    found = sum(len(c) for c in classes)
    if found < n_images and not (allow_fewer and found > 0):
        raise ValueError(f"networks A and B predict the same class on only {found} of the {seen} images given; "
                         f"{n_images} were asked for (ask for fewer)")
    return torch.cat(chosen)[:n_images], torch.cat(classes)[:n_images], torch.cat(indices)[:n_images]
