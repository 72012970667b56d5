"""kl_divergence alone, forward + gradient of both logit sets, over class counts from CIFAR to LLM vocabularies.

eager     F.kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True), what a user would write
compile   torch.compile of that eager code
cpu/cuda/triton   the fused op

B x C is about 1.3M to 2.1M elements (the GPU adds a 8M-element point); memory floor: read both logit sets, write
both gradients.
"""
import pytest
import torch
import torch.nn.functional as F

import zskt_fast
from zskt_fast.ops import _library

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
SHAPES = [(128, 10), (1024, 1000), (64, 32000), (16, 128256)] + ([(64, 128256)] if HAS_CUDA else [])
BACKENDS = ["eager", "compile"] + [b for b in ("cpu", "cuda", "triton") if b in _library.available_backends(DEVICE)]


def eager_kl(s, t):
    return F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_divergence_forward_backward(benchmark, backend, shape):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_()
    t = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_()
    if backend == "eager":
        loss_fn = eager_kl
    elif backend == "compile":
        loss_fn = torch.compile(eager_kl, fullgraph=True)
    else:
        def loss_fn(a, b):
            return zskt_fast.kl_divergence(a, b, reduction="batchmean", backend=backend)

    def step():
        grads = torch.autograd.grad(loss_fn(s, t), [s, t])
        if HAS_CUDA:
            torch.cuda.synchronize()
        return grads

    benchmark.group = f"kl_divergence fwd+bwd {DEVICE} {shape[0]}x{shape[1]}"
    benchmark.extra_info.update(backend=backend, batch=shape[0], classes=shape[1], device=DEVICE,
                                floor_bytes=4 * s.numel() * 4, threads=torch.get_num_threads())
    benchmark.pedantic(step, warmup_rounds=3, rounds=20 if DEVICE == "cpu" else 100, iterations=1)
