"""kl_divergence alone: forward, backward and full, over batch size at CIFAR's 10 classes and over class counts from
CIFAR to LLM vocabularies (B x C of 1.3M to 2.1M elements; the GPU adds larger points).

eager     F.kl_div(log_softmax(s), log_softmax(t), log_target=True), what a user would write
compile   torch.compile of that eager code
cpu/cuda/triton   the fused op
liger     (GPU only, where Liger-Kernel is installed; never a dependency) LigerKLDIVLoss(log_target=True) on the two
          log_softmax outputs, what a Liger user writes; its op returns no gradient for the target, so it runs in the
          frozen-teacher sweep only
Sweeps "batch" and "classes": gradients of both logit sets, as the generator step needs. Sweep "classes-student": the
same class counts with a frozen teacher (the student step, and how language models are distilled): the student's
gradient only. Memory floor: read both logit sets (forward); read both, write the gradients asked for (backward,
full). See harness.py for the modes, the timer and the memory measurement.
"""
import pytest
import torch
import torch.nn.functional as F

import zskt_fast
from harness import BACKENDS, DTYPES, HAS_CUDA, MODES, dtype_name, loss_function, pick, randn, time_op

BATCH_SWEEP = [(b, 10) for b in pick([4], [32, 128, 512, 1024], [32, 128, 512, 1024, 4096], short=[128, 4096])]
CLASS_SWEEP = pick([], [(1024, 1000), (64, 32000), (16, 128256)],
                   [(1024, 1000), (64, 32000), (16, 128256), (64, 128256), (256, 128256)],
                   short=[(64, 32000), (256, 128256)])
STUDENT_SWEEP = pick([(4, 10)], CLASS_SWEEP, CLASS_SWEEP, short=[(256, 128256)])
POINTS = ([("batch", s) for s in BATCH_SWEEP] + [("classes", s) for s in CLASS_SWEEP]
          + [("classes-student", s) for s in STUDENT_SWEEP])


def eager_kl(s, t):
    return F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)


def fused_kl(s, t, backend):
    return zskt_fast.kl_divergence(s, t, reduction="batchmean", backend=backend)


def liger_kl():
    """Liger-Kernel's KL loss on log-probabilities, or pytest.skip with the reason it cannot run."""
    try:
        from liger_kernel.transformers import LigerKLDIVLoss
    except ImportError as error:
        pytest.skip(f"Liger-Kernel is not installed ({error}); it is an optional comparison")
    loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)
    return lambda s, t: loss(F.log_softmax(s, 1), F.log_softmax(t, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p[0]}-{p[1][0]}x{p[1][1]}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS + (["liger"] if HAS_CUDA else []))
def test_kl_divergence(benchmark, backend, mode, point, dtype):
    sweep, (batch, classes) = point
    frozen_teacher = sweep == "classes-student"
    if backend == "liger" and not frozen_teacher:
        pytest.skip("Liger-Kernel's KL loss returns no gradient for the teacher's side: frozen-teacher sweep only")
    gen = torch.Generator().manual_seed(0)
    s = randn(batch, classes, dtype=dtype, grad=True, generator=gen)
    t = randn(batch, classes, dtype=dtype, grad=not frozen_teacher, generator=gen)
    loss_fn = liger_kl() if backend == "liger" else loss_function(backend, eager_kl, fused_kl)
    time_op(benchmark, op="kl_divergence", backend=backend, mode=mode, dtype=dtype, sweep=sweep, loss_fn=loss_fn,
            inputs=(s, t), wrt=[s] if frozen_teacher else [s, t], batch=batch, classes=classes,
            x=batch if sweep == "batch" else classes)
