"""attention_transfer alone: forward, backward and full, over batch size at the WRN-40-2 teacher / WRN-16-1 student
shapes (three layer pairs, 32x32 to 8x8) and over spatial size at a fixed batch (one layer pair, 16 student and 32
teacher channels).

eager     F.normalize(A.pow(2).mean(1).flatten(1)) per map, the authors' formula (zskt_fast.ops.reference)
compile   torch.compile of that eager code
cpu/cuda/triton   the fused op
Gradients of the student's maps (the teacher's are frozen). Memory floor: read both feature sets (forward); read
both, write the student's gradients (backward, full). See harness.py for the modes, the timer and the memory
measurement.
"""
import pytest
import torch

import zskt_fast
from harness import BACKENDS, DTYPES, MODES, dtype_name, loss_function, pick, randn, time_op
from zskt_fast.ops import reference

WRN_STUDENT, WRN_TEACHER, WRN_SIZES = (16, 32, 64), (32, 64, 128), (32, 16, 8)
BATCH_SWEEP = pick([2], [32, 128, 512], [32, 128, 512, 1024], short=[128, 1024])
SPATIAL_BATCH = pick(2, 32, 128)
SPATIAL_SWEEP = pick([], [8, 16, 32, 64], [8, 16, 32, 64, 128], short=[])
POINTS = [("batch", b) for b in BATCH_SWEEP] + [("spatial", s) for s in SPATIAL_SWEEP]


def layers(sweep, x):
    """(batch, [(student channels, teacher channels, size)]) of a sweep point."""
    if sweep == "batch":
        return x, list(zip(WRN_STUDENT, WRN_TEACHER, WRN_SIZES))
    return SPATIAL_BATCH, [(16, 32, x)]


def make_features(sweep, x, dtype):
    gen = torch.Generator().manual_seed(0)
    batch, shapes = layers(sweep, x)
    student = [randn(batch, cs, h, h, dtype=dtype, grad=True, generator=gen) for cs, _, h in shapes]
    teacher = [randn(batch, ct, h, h, dtype=dtype, grad=False, generator=gen) for _, ct, h in shapes]
    return student, teacher


def fused_at(s, t, backend):
    return zskt_fast.attention_transfer(s, t, beta=250.0, backend=backend)


def eager_at(s, t):
    return reference.attention_transfer(s, t, 250.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_transfer(benchmark, backend, mode, point, dtype):
    sweep, x = point
    student, teacher = make_features(sweep, x, dtype)
    time_op(benchmark, op="attention_transfer", backend=backend, mode=mode, dtype=dtype, sweep=sweep,
            loss_fn=loss_function(backend, eager_at, fused_at), inputs=(student, teacher), wrt=student,
            batch=layers(sweep, x)[0], x=x)
