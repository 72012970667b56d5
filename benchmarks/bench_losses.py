"""Forward+backward of zskt_student_loss at the WRN-40-2 teacher / WRN-16-1 student shapes, per backend.

eager     the formulas in plain PyTorch (zskt_fast.ops.reference)
compile   torch.compile of that same eager code
cpu/cuda/triton   the fused ops
Run with `make bench` (prints a table with ratios to eager and achieved bandwidth, see report.py).
"""
import pytest
import torch

import zskt_fast
from zskt_fast.ops import _library, reference

STUDENT_CHANNELS, TEACHER_CHANNELS, SIZES = (16, 32, 64), (32, 64, 128), (32, 16, 8)
NUM_CLASSES = 10
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
BATCHES = [128, 512] if HAS_CUDA else [128]
DTYPES = [torch.float32, torch.bfloat16] if HAS_CUDA else [torch.float32]
BACKENDS = ["eager", "compile"] + [b for b in ("cpu", "cuda", "triton") if b in _library.available_backends(DEVICE)]


def floor_bytes(batch, dtype):
    """Read both feature sets once, write the student's feature gradients once (logits are negligible)."""
    size = torch.tensor([], dtype=dtype).element_size()
    student = sum(batch * c * s * s for c, s in zip(STUDENT_CHANNELS, SIZES))
    teacher = sum(batch * c * s * s for c, s in zip(TEACHER_CHANNELS, SIZES))
    return (2 * student + teacher) * size


def make_inputs(batch, dtype):
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, grad):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype).requires_grad_(grad)

    s_logits, t_logits = randn(batch, NUM_CLASSES, grad=True), randn(batch, NUM_CLASSES, grad=False)
    s_feats = [randn(batch, c, s, s, grad=True) for c, s in zip(STUDENT_CHANNELS, SIZES)]
    t_feats = [randn(batch, c, s, s, grad=False) for c, s in zip(TEACHER_CHANNELS, SIZES)]
    return s_logits, t_logits, s_feats, t_feats


def eager_student_loss(s_logits, t_logits, s_feats, t_feats):
    return reference.kl_divergence(s_logits, t_logits, 1.0, "mean") + reference.attention_transfer(s_feats, t_feats,
                                                                                                   250.0)


def make_step(backend, inputs):
    """One forward+backward (gradients returned, not accumulated, so no extra pass over .grad)."""
    s_logits, t_logits, s_feats, t_feats = inputs
    wrt = [s_logits, *s_feats]
    if backend in ("eager", "compile"):
        loss_fn = eager_student_loss if backend == "eager" else torch.compile(eager_student_loss, fullgraph=True)
    else:
        def loss_fn(*args):
            return zskt_fast.zskt_student_loss(*args, beta=250.0, backend=backend)

    def step():
        grads = torch.autograd.grad(loss_fn(s_logits, t_logits, s_feats, t_feats), wrt)
        if HAS_CUDA:
            torch.cuda.synchronize()
        return grads

    return step


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_student_loss_forward_backward(benchmark, backend, batch, dtype):
    inputs = make_inputs(batch, dtype)
    step = make_step(backend, inputs)
    benchmark.group = f"zskt_student_loss fwd+bwd {DEVICE} B={batch} {str(dtype).replace('torch.', '')}"
    benchmark.extra_info.update(backend=backend, batch=batch, dtype=str(dtype), device=DEVICE,
                                floor_bytes=floor_bytes(batch, dtype), threads=torch.get_num_threads())
    benchmark.pedantic(step, warmup_rounds=3, rounds=30 if DEVICE == "cpu" else 100, iterations=1)


def test_copy_bandwidth(benchmark):
    """The machine's memory bandwidth as PyTorch sees it: a 256 MB float32 copy (read + write)."""
    src = torch.randn(64 * 1024 * 1024, device=DEVICE)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        if HAS_CUDA:
            torch.cuda.synchronize()

    benchmark.group = "memory bandwidth"
    benchmark.extra_info.update(backend="copy", device=DEVICE, floor_bytes=2 * src.numel() * 4)
    benchmark.pedantic(copy, warmup_rounds=2, rounds=20, iterations=1)
