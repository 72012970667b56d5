"""Transition curves and the mean transition error (Algorithm 2 of the paper), all trajectories as one batch.

From each of N test images on which networks A and B predict the same class i, and toward each other class j, the
image takes K plain gradient steps x <- x - xi * grad_x CE(A(x), j). Before each update the softmax probability of j is
recorded under A and under B. Every trajectory is independent of the others (both networks are in eval mode), so they
run together, in chunks sized to a memory budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tqdm import tqdm

from ...common import atomic_write, check_choice, check_count, check_positive, eval_mode
from ..lifecycle.distributed import current_world
from ..settings.comparison import DEFAULT_IMAGES, DEFAULT_STEP_SIZE, DEFAULT_STEPS, SOURCES
from .matching_images import image_batches, logits_of, select_matching_images

__all__ = ["SOURCES", "TransitionCurves", "mean_transition_error", "select_matching_images", "transition_curves"]



@dataclass
class TransitionCurves:
    """p_a, p_b: [N, C-1, K] probabilities of the target class under A and B before each step; targets: [N, C-1]
    (the classes (i + 1) % C, ..., (i + C - 1) % C of each image's source class i); sources: [N]; indices: [N]
    positions of the images in the data given."""
    p_a: torch.Tensor
    p_b: torch.Tensor
    targets: torch.Tensor
    sources: torch.Tensor
    indices: torch.Tensor
    steps: int
    step_size: float

    @property
    def mte(self) -> float:
        """(1/N) sum_n (1/(C-1)) sum_j (1/K) sum_k |p_j^A - p_j^B|."""
        return (self.p_a.double() - self.p_b.double()).abs().mean().item()

    def mean_curves(self) -> tuple[np.ndarray, np.ndarray]:
        """The transition curves: p_j^A and p_j^B averaged over images and target classes, per step [K]."""
        return self.p_a.double().mean((0, 1)).numpy(), self.p_b.double().mean((0, 1)).numpy()

    def save(self, path) -> None:
        mean_a, mean_b = self.mean_curves()
        arrays = {"p_a": self.p_a.numpy(), "p_b": self.p_b.numpy(), "targets": self.targets.numpy(),
                  "sources": self.sources.numpy(), "indices": self.indices.numpy(), "mean_a": mean_a, "mean_b": mean_b,
                  "mte": self.mte, "steps": self.steps, "step_size": self.step_size}
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _bytes_per_trajectory(net_a: nn.Module, image: torch.Tensor) -> int:
    """Memory one trajectory needs during a step: what autograd saves for the backward pass through A (counted with
    saved-tensor hooks on probe batches of 2 and 6, so that the weights, saved once whatever the batch, drop out), times
    3 for the gradient pass, B's forward and the temporaries."""
    def saved_bytes(batch: int) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = image.unsqueeze(0).expand(batch, *image.shape).clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits_of(net_a, x)
        return total

    return max(3 * (saved_bytes(6) - saved_bytes(2)) // 4, 1)


def default_memory_budget(device: torch.device) -> int:
    """Half the free GPU memory on CUDA; 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 2 * 1024 ** 3


def transition_curves(net_a: nn.Module, net_b: nn.Module, data, *, n_images: int = DEFAULT_IMAGES,
                      steps: int = DEFAULT_STEPS, step_size: float = DEFAULT_STEP_SIZE, device=None,
                      memory_budget: int | None = None, max_batch: int | None = None, source: str = "agreed",
                      shuffle_seed: int | None = None, progress: bool = True,
                      distributed: bool = False, allow_fewer: bool = False) -> TransitionCurves:
    """Algorithm 2 for all N * (C - 1) trajectories at once (in chunks that fit `memory_budget` bytes, or at most
    `max_batch` trajectories). `data`: a tensor of images, an (images, labels) pair, or a loader of (images, labels).
    The N images are the first on which A and B agree, in the data's order or (`shuffle_seed`) a seeded random order;
    the source class i of an image is their common prediction (source="agreed", the paper's Algorithm 2) or its label
    (source="label", what the authors' code does).
    Both networks are used in eval mode and left in the mode they were in; their parameters receive no gradient.
    `distributed`: the trajectories are shared out over the ranks of the initialised process group (each runs a
    contiguous block; every trajectory is independent of the others) and gathered, so that every rank returns the
    curves of all of them. `allow_fewer`: when A and B agree on fewer than `n_images` images, use those (N is then
    len(curves.sources)) instead of raising."""
    _check_options(n_images, steps, step_size, source, shuffle_seed, max_batch, memory_budget)
    if device is None:
        param = next(net_a.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    num_classes = _common_classes(net_a, net_b, data, device)
    images, sources, indices = select_matching_images(net_a, net_b, data, n_images, device, source=source,
                                                      shuffle_seed=shuffle_seed, allow_fewer=allow_fewer)
    # Trajectory t = n * (C - 1) + k starts from image n and heads for class (i_n + k + 1) % C.
    targets = (sources[:, None] + torch.arange(1, num_classes)[None, :]) % num_classes   # [N, C-1]
    start_images = images.repeat_interleave(num_classes - 1, dim=0)                      # [N(C-1), ...]
    total = targets.numel()
    with eval_mode(net_a, net_b):
        per_trajectory = _bytes_per_trajectory(net_a, images[0].to(device))
    chunk = max(1, (memory_budget or default_memory_budget(device)) // per_trajectory)
    chunk = min(chunk, total, max_batch or total)
    world = current_world() if distributed else None
    low, high = (0, total) if world is None else (world.rank * total // world.size,
                                                  (world.rank + 1) * total // world.size)
    p_a, p_b = _trajectories(net_a, net_b, start_images, targets.flatten(), (low, high), chunk, steps, step_size,
                             device, progress)
    if world is not None and world.size > 1:
        p_a, p_b = _gathered(p_a, p_b, low, high)
    shape = (len(images), num_classes - 1, steps)
    return TransitionCurves(p_a.view(shape).cpu(), p_b.view(shape).cpu(), targets, sources, indices, steps,
                            float(step_size))


def _check_options(n_images, steps, step_size, source, shuffle_seed, max_batch, memory_budget) -> None:
    check_count(n_images, "n_images")
    check_choice(source, SOURCES, "source")
    if shuffle_seed is not None:
        check_count(shuffle_seed, "shuffle_seed", minimum=0)
    check_count(steps, "steps")
    check_positive(step_size, "step_size")
    if max_batch is not None:
        check_count(max_batch, "max_batch")
    if memory_budget is not None:
        check_count(memory_budget, "memory_budget")


def _common_classes(net_a: nn.Module, net_b: nn.Module, data, device: torch.device) -> int:
    """The number of classes both networks predict, read off one image; raises ValueError when they differ."""
    first = next(iter(image_batches(data)), (None, None))[0]
    if first is None or len(first) == 0:
        raise ValueError("no images given")
    with torch.no_grad(), eval_mode(net_a, net_b):
        probe = first[:1].to(device)
        classes_a, classes_b = logits_of(net_a, probe).shape[1], logits_of(net_b, probe).shape[1]
    if classes_a != classes_b:
        raise ValueError(f"network A predicts {classes_a} classes and network B {classes_b}: their transition curves "
                         f"cannot be compared")
    if classes_a < 2:
        raise ValueError("transition curves need at least 2 classes")
    return classes_a


def _trajectories(net_a: nn.Module, net_b: nn.Module, start_images: torch.Tensor, targets: torch.Tensor,
                  span: tuple[int, int], chunk: int, steps: int, step_size: float, device: torch.device,
                  progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """p_a and p_b [total, K] of the trajectories in `span` (the others' rows stay unset), `chunk` at a time."""
    low, high = span
    total = len(targets)
    p_a = torch.empty(total, steps, device=device)  # filled on the device: no host synchronisation per step
    p_b = torch.empty(total, steps, device=device)
    bar = tqdm(total=math.ceil((high - low) / chunk) * steps, desc="transition curves", unit="step",
               disable=not progress, dynamic_ncols=True)
    with eval_mode(net_a, net_b):
        for begin in range(low, high, chunk):
            end = min(begin + chunk, high)
            x = start_images[begin:end].to(device)
            target = targets[begin:end].to(device)
            rows = torch.arange(len(target), device=device)
            for k in range(steps):
                last = k == steps - 1  # the image after the last update is never looked at: no backward for it
                x = x.detach().requires_grad_(not last)
                with torch.set_grad_enabled(not last):
                    logits_a = logits_of(net_a, x)
                with torch.no_grad():
                    logits_b = logits_of(net_b, x)
                    p_a[begin:begin + len(target), k] = F.softmax(logits_a.float(), 1)[rows, target]
                    p_b[begin:begin + len(target), k] = F.softmax(logits_b.float(), 1)[rows, target]
                if not last:
                    # Summed, not averaged: each trajectory then moves by its own gradient, as if it ran alone.
                    loss = F.cross_entropy(logits_a, target, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x)  # inputs=x only: no parameter gradient is computed
                    x = x.detach() - step_size * grad
                bar.update(1)
    bar.close()
    return p_a, p_b


def _gathered(p_a: torch.Tensor, p_b: torch.Tensor, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's block of trajectories, on every rank."""
    blocks = [None] * dist.get_world_size()
    dist.all_gather_object(blocks, (low, high, p_a[low:high].cpu(), p_b[low:high].cpu()))
    p_a, p_b = p_a.cpu(), p_b.cpu()
    for block_low, block_high, block_a, block_b in blocks:
        p_a[block_low:block_high], p_b[block_low:block_high] = block_a, block_b
    return p_a, p_b


def mean_transition_error(net_a: nn.Module, net_b: nn.Module, data, **kwargs) -> float:
    """MTE(A, B) of Algorithm 2; keyword arguments as transition_curves()."""
    return transition_curves(net_a, net_b, data, **kwargs).mte
