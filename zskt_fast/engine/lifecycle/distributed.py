"""Data-parallel Algorithm 1 on torch.distributed: the process group from torchrun's environment, batch-norm statistics
of the global batch, gradients averaged across ranks, and the flags all ranks must agree on.

N ranks compute what one process computes: every rank draws the whole global noise batch from the run's seeded
generator and keeps its slice; the batch-norm layers of the student and the generator normalise with the statistics of
the global batch (GlobalBatchNorm, all-reduced sums); the gradient of the network being updated is averaged across
ranks once per step (one all-reduce of the flattened gradients), so that clipping and Adam see the gradient of the
global batch's mean loss. Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

DIST_BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""
    rank: int
    size: int
    local_rank: int

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This rank's slice of a global batch."""
        local = batch_size // self.size
        return slice(self.rank * local, (self.rank + 1) * local)


def launched_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from the environment torchrun sets, or None when not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from None


def init_world(device: str, backend: str = "auto", timeout_minutes: float = 30.0) -> tuple[World, str]:
    """Joins the process group torchrun describes (NCCL for CUDA devices, gloo for the CPU, unless `backend` says);
    each rank takes the GPU of its local rank. Returns the world and the device string to use ('cuda' now means this
    rank's GPU). Collectives that wait longer than `timeout_minutes` (a rank died) end the job with an error."""
    ranks = launched_ranks()
    if ranks is None:
        raise ValueError("not launched by torchrun: RANK and WORLD_SIZE are not set")
    rank, size, local_rank = ranks
    if backend not in DIST_BACKENDS:
        raise ValueError(f"dist_backend must be one of {', '.join(DIST_BACKENDS)}; got {backend!r}")
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "nccl" and not on_gpu:
        raise ValueError("the NCCL backend needs CUDA devices and this run is on the CPU: use the gloo backend "
                         "(--dist-backend gloo, or auto)")
    if on_gpu:
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             f"launch at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    chosen = backend if backend != "auto" else ("nccl" if on_gpu else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(chosen, timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": torch.device("cuda", local_rank)} if chosen == "nccl" else {}))
    return World(rank, size, local_rank), ("cuda" if on_gpu else "cpu")


@contextlib.contextmanager
def process_group_closed_at_exit():
    """Closes the process group when the block ends: after a barrier when it ends normally (no rank tears the group
    down while another still uses it), at once when it raised."""
    try:
        yield
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def current_world() -> World | None:
    """The initialised process group as a World, or None."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    ranks = launched_ranks()
    return World(dist.get_rank(), dist.get_world_size(), ranks[2] if ranks else 0)


def average_gradients(params: list[torch.Tensor], world: World) -> None:
    """Replaces each gradient by its mean over the ranks: one all-reduce of the flattened gradients (summed in rank
    order by the backend, no atomics on our side)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or world.size == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world.size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(tensor: torch.Tensor, world: World | None) -> torch.Tensor:
    """The mean of `tensor` over the ranks, in place."""
    if world is not None and world.size > 1:
        dist.all_reduce(tensor)
        tensor.div_(world.size)
    return tensor


def agree(flags: list[bool], world: World | None, device: torch.device) -> list[bool]:
    """Each flag true on every rank when it is true on any: decisions made on one rank (a signal arrived, a
    checkpoint is due by the clock) that every rank must act on together."""
    if world is None or world.size == 1:
        return flags
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def broadcast_object(value, world: World | None):
    """Rank 0's `value` on every rank."""
    if world is None or world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _GatherFromRanks(torch.autograd.Function):
    """[ranks, ...]: every rank's tensor, with its gradient (each rank's tensor reaches every rank's output: its
    gradient is the sum over ranks of the gradients of its slot)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_batch(tensor: torch.Tensor, world: World | None) -> torch.Tensor:
    """The global batch's rows from every rank's share, in rank order, with gradients to each rank's share (summed
    over the ranks, each of which computes the same loss of the global batch). Alone: the tensor given."""
    if world is None or world.size == 1:
        return tensor
    return _GatherFromRanks.apply(tensor).flatten(0, 1)


def global_mean(tensor: torch.Tensor, world: World | None) -> torch.Tensor:
    """The mean over ranks of a tensor that each rank computed as a mean over its (equal) share of the batch: the
    global batch's mean, with gradients to every rank's. Alone: the tensor given."""
    if world is None or world.size == 1:
        return tensor
    return _GatherFromRanks.apply(tensor).mean(0)


def global_statistics(mean: torch.Tensor, var: torch.Tensor, world: World | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and biased variance of the global batch from each rank's (equal shares of the batch), with
    gradients to every rank's: var = mean over ranks of (var_r + (mean_r - mean)^2). Alone: the statistics given."""
    if world is None or world.size == 1:
        return mean, var
    means, variances = _GatherFromRanks.apply(torch.stack([mean, var])).unbind(1)  # [ranks, C] each
    global_mean = means.mean(0)
    return global_mean, (variances + (means - global_mean).pow(2)).mean(0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation whose training-mode statistics are those of the global batch over all ranks (the same
    formulas as BatchNorm: biased variance to normalise, unbiased for the running variance), with gradients through
    the all-reduces. Works on CPU (gloo) and GPU (NCCL). Eval mode, and a process group of one, are plain BatchNorm.
    Two all-reduces per layer and pass: the sums, then the squared deviations from the global mean (no
    E[x^2] - E[x]^2 cancellation)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    @torch.compiler.disable  # its collectives run eagerly; compiled steps break their graph here
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        world = current_world()
        if not self.training or world is None or world.size == 1:
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = input.numel() // input.shape[1]  # the same on every rank: equal shares of the batch
        count = local_count * world.size
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input  # as BatchNorm under AMP
        local_mean = x.mean(dims)
        local_m2 = (x - local_mean.view(shape)).pow(2).sum(dims)
        means, m2s = _GatherFromRanks.apply(torch.stack([local_mean, local_m2])).unbind(1)  # [ranks, C] each
        mean = means.mean(0)
        var = (m2s.sum(0) + local_count * (means - mean).pow(2).sum(0)) / count
        centred = x - mean.view(shape)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * (count / max(count - 1, 1)), alpha=momentum)
        return out.to(input.dtype)


def convert_batch_norm(net: nn.Module, to_global: bool = True) -> nn.Module:
    """Swaps every BatchNorm layer of `net` for a GlobalBatchNorm (or, with to_global False, back), keeping its
    parameters, buffers and settings; returns `net` (or the swapped layer when `net` is one)."""
    source, target = (nn.modules.batchnorm._BatchNorm, GlobalBatchNorm) if to_global else (GlobalBatchNorm, None)
    if isinstance(net, source) and not (to_global and isinstance(net, GlobalBatchNorm)):
        plain = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
        cls = target or plain.get(getattr(net, "_dims", 2), nn.BatchNorm2d)
        swapped = cls(net.num_features, net.eps, net.momentum, net.affine, net.track_running_stats)
        swapped._dims = getattr(net, "_dims", {nn.BatchNorm1d: 1, nn.BatchNorm3d: 3}.get(type(net), 2))
        if net.affine:
            swapped.weight, swapped.bias = net.weight, net.bias
        swapped.running_mean, swapped.running_var = net.running_mean, net.running_var
        swapped.num_batches_tracked = net.num_batches_tracked
        swapped.train(net.training)
        return swapped
    for name, child in net.named_children():
        net.add_module(name, convert_batch_norm(child, to_global))
    return net


# What gloo and NCCL say when the process at the other end is gone or stopped answering.
LOST_PEER_SIGNS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out", "timeout",
                   "nccl error", "ncclremoteerror", "socket closed")


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process of the job died or hung."""
    dist_error = getattr(dist, "DistError", ())
    if isinstance(error, dist_error):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and dist.is_available() and dist.is_initialized() and \
        any(sign in text for sign in LOST_PEER_SIGNS)


def check_global_batch(batch_size: int, world_size: int, name: str = "batch size") -> None:
    """A data-parallel batch (or pool) is split evenly over the processes."""
    if batch_size % world_size:
        raise ValueError(f"the global {name} {batch_size} is not divisible by the world size {world_size}: "
                         f"choose a {name} that is a multiple of the number of processes")


def data_parallel_world(distributed: bool | None, batch_size: int) -> World | None:
    """The ranks a run shares its batches with: None runs in this process alone. `distributed` None: the initialised
    process group when there is one (torchrun); False: none; True: the process group, which must exist. A group of
    one computes what one process computes, with no collective to wait for: None too."""
    world = current_world() if distributed is not False else None
    if distributed and world is None:
        raise ValueError("distributed=True needs an initialised torch.distributed process group (launch with torchrun)")
    if world is not None:
        check_global_batch(batch_size, world.size)
    return world if world is not None and world.size > 1 else None


@contextlib.contextmanager
def global_batch_norm(nets: list[nn.Module], enabled: bool):
    """Inside the block, the batch-norm layers of `nets` normalise with the statistics of the global batch (before the
    networks are traced for their features); the networks leave it plain again."""
    if enabled:
        for net in nets:
            convert_batch_norm(net)
    try:
        yield
    finally:
        if enabled:
            for net in nets:
                convert_batch_norm(net, to_global=False)
