"""The two losses of Algorithm 1 as the trainer calls them: forward, backward and full.

zskt_student_loss    KL + 250 * sum AT at the WRN-40-2 teacher / WRN-16-1 student shapes, over batch size and over
                     the spatial size of the maps (the three layers scaled together, at a fixed batch); gradients of
                     the student's logits and maps
zskt_generator_loss  -KL at 10 classes over batch size; gradients of both logit sets

eager     the formulas in plain PyTorch (zskt_fast.ops.reference)
compile   torch.compile of that eager code
cpu/cuda/triton   the fused ops
Memory floor: read the inputs (forward); read them, write the gradients (backward, full). See harness.py.
"""
import pytest
import torch

import zskt_fast
from harness import BACKENDS, DTYPES, MODES, dtype_name, loss_function, pick, randn, time_op
from zskt_fast.ops import reference

STUDENT_CHANNELS, TEACHER_CHANNELS, SIZES = (16, 32, 64), (32, 64, 128), (32, 16, 8)
NUM_CLASSES = 10
BATCH_SWEEP = pick([2], [32, 128, 512], [32, 128, 512, 1024], short=[128, 1024])
SPATIAL_BATCH = pick(2, 32, 128)
SPATIAL_SWEEP = pick([], [16, 32, 64], [16, 32, 64, 128], short=[])  # the largest layer's size; the others halve
GENERATOR_BATCHES = pick([4], [32, 128, 512, 1024], [32, 128, 512, 1024, 4096], short=[128])
STUDENT_POINTS = [("batch", b) for b in BATCH_SWEEP] + [("spatial", s) for s in SPATIAL_SWEEP]


def student_inputs(sweep, x, dtype):
    gen = torch.Generator().manual_seed(0)
    batch, top = (x, SIZES[0]) if sweep == "batch" else (SPATIAL_BATCH, x)
    sizes = [top, top // 2, top // 4]
    s_logits = randn(batch, NUM_CLASSES, dtype=dtype, grad=True, generator=gen)
    t_logits = randn(batch, NUM_CLASSES, dtype=dtype, grad=False, generator=gen)
    s_feats = [randn(batch, c, h, h, dtype=dtype, grad=True, generator=gen) for c, h in zip(STUDENT_CHANNELS, sizes)]
    t_feats = [randn(batch, c, h, h, dtype=dtype, grad=False, generator=gen) for c, h in zip(TEACHER_CHANNELS, sizes)]
    return batch, (s_logits, t_logits, s_feats, t_feats)


def eager_student_loss(s_logits, t_logits, s_feats, t_feats):
    return reference.kl_divergence(s_logits, t_logits, 1.0, "mean") + reference.attention_transfer(s_feats, t_feats,
                                                                                                   250.0)


def fused_student_loss(s_logits, t_logits, s_feats, t_feats, backend):
    return zskt_fast.zskt_student_loss(s_logits, t_logits, s_feats, t_feats, beta=250.0, backend=backend)


def eager_generator_loss(s_logits, t_logits):
    return -reference.kl_divergence(s_logits, t_logits, 1.0, "mean")


def fused_generator_loss(s_logits, t_logits, backend):
    return zskt_fast.zskt_generator_loss(s_logits, t_logits, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("point", STUDENT_POINTS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_zskt_student_loss(benchmark, backend, mode, point, dtype):
    sweep, x = point
    batch, args = student_inputs(sweep, x, dtype)
    s_logits, _, s_feats, _ = args
    time_op(benchmark, op="zskt_student_loss", backend=backend, mode=mode, dtype=dtype, sweep=sweep,
            loss_fn=loss_function(backend, eager_student_loss, fused_student_loss), inputs=args,
            wrt=[s_logits, *s_feats], batch=batch, x=x)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("batch", GENERATOR_BATCHES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_zskt_generator_loss(benchmark, backend, mode, batch, dtype):
    gen = torch.Generator().manual_seed(0)
    s = randn(batch, NUM_CLASSES, dtype=dtype, grad=True, generator=gen)
    t = randn(batch, NUM_CLASSES, dtype=dtype, grad=True, generator=gen)
    time_op(benchmark, op="zskt_generator_loss", backend=backend, mode=mode, dtype=dtype, sweep="batch",
            loss_fn=loss_function(backend, eager_generator_loss, fused_generator_loss), inputs=(s, t), wrt=[s, t],
            batch=batch, x=batch)
