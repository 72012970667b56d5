"""bn_statistics_prior alone: forward, backward and full, over batch size at the inputs of a WRN-40-2 teacher's 37
BatchNorm2d layers on 32x32 images (16 to 128 channels, 32x32 to 8x8), the CIFAR-10 teacher of the methods' tables.

eager     what the data-free frameworks' forward hooks compute per layer: input.mean([0, 2, 3]) and
          input.permute(1, 0, 2, 3).contiguous().view(C, -1).var(1, unbiased=False), then the two norms
compile   torch.compile of that eager code
cpu/cuda/triton   the fused op (on CUDA tensors `cuda` runs the Triton kernel)
Gradients of the layer inputs. Memory floor: read every input (forward); read every input and write its gradient
(backward, full). See harness.py for the modes, the timer and the memory measurement.
"""
import functools

import pytest
import torch

import zskt_fast
from harness import BACKENDS, DTYPES, MODES, dtype_name, loss_function, pick, randn, time_op

BATCH_SWEEP = pick([2], [8, 32, 128], [128, 256, 512], short=[256])
POINTS = [("batch", b) for b in BATCH_SWEEP]


@functools.cache
def teacher_layers() -> tuple[tuple[int, int], ...]:
    """(channels, side) of the input of every BatchNorm2d layer of WRN-40-2 on 32x32 images, in order."""
    from zskt_fast.engine.methods.objectives import batch_norm_layers
    from zskt_fast.models import build_classifier

    net = build_classifier("wrn-40-2", num_classes=10, in_channels=3).eval()
    shapes = []
    hooks = [bn.register_forward_pre_hook(lambda m, args: shapes.append((args[0].shape[1], args[0].shape[-1])))
             for bn in batch_norm_layers(net)]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return tuple(shapes)


def make_inputs(batch, dtype):
    gen = torch.Generator().manual_seed(0)
    inputs = [randn(batch, c, side, side, dtype=dtype, grad=True, generator=gen) for c, side in teacher_layers()]
    means = [(0.1 * torch.randn(c, generator=gen)).to(inputs[0].device) for c, _ in teacher_layers()]
    variances = [(1 + torch.rand(c, generator=gen)).to(inputs[0].device) for c, _ in teacher_layers()]
    return inputs, means, variances


def fused_prior(inputs, means, variances, backend):
    return zskt_fast.bn_statistics_prior(inputs, means, variances, backend=backend)


def frameworks_prior(inputs, means, variances):
    total = 0
    for x, running_mean, running_var in zip(inputs, means, variances):
        channels = x.shape[1]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).contiguous().view([channels, -1]).var(1, unbiased=False)
        total = total + torch.norm(running_var - var, 2) + torch.norm(running_mean - mean, 2)
    return total


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bn_statistics_prior(benchmark, backend, mode, point, dtype):
    sweep, batch = point
    inputs, means, variances = make_inputs(batch, dtype)
    time_op(benchmark, op="bn_statistics_prior", backend=backend, mode=mode, dtype=dtype, sweep=sweep,
            loss_fn=loss_function(backend, frameworks_prior, fused_prior), inputs=(inputs, means, variances),
            wrt=inputs, batch=batch, x=batch)
