"""The fused losses on the GPU inside CUDA graphs: a captured forward+backward replayed on fresh inputs equals eager.
Skipped, with the reason, where there is no GPU."""
import pytest
import torch

import zskt_fast

from conftest import HAS_CUDA, skip_unless_runnable

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and none is present")]

STUDENT = [(32, 16, 32, 32), (32, 32, 16, 16), (32, 64, 8, 8)]
TEACHER = [(32, 32, 32, 32), (32, 64, 16, 16), (32, 128, 8, 8)]


def random_inputs(seed, dtype):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, device="cuda").to(dtype)

    return ([randn((32, 10)), randn((32, 10))] + [randn(s) for s in STUDENT] + [randn(s) for s in TEACHER])


def loss_and_grads(backend, flat):
    s_logits, t_logits, s_feats, t_feats = flat[0], flat[1], flat[2:5], flat[5:8]
    loss = zskt_fast.zskt_student_loss(s_logits, t_logits, s_feats, t_feats, beta=250.0, backend=backend)
    grads = torch.autograd.grad(loss, [s_logits, t_logits, *s_feats, *t_feats])
    return [loss, *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_captured_forward_backward_replays_like_eager(backend, dtype):
    skip_unless_runnable(backend, "cuda")
    static = [x.requires_grad_() for x in random_inputs(0, dtype)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (Triton compiles, the allocator settles) outside the capture
        for _ in range(3):
            loss_and_grads(backend, static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = loss_and_grads(backend, static)
    for seed in (1, 2):
        fresh = random_inputs(seed, dtype)
        with torch.no_grad():
            for dst, src in zip(static, fresh):
                dst.copy_(src)
        graph.replay()
        expected = loss_and_grads(backend, [x.clone().requires_grad_() for x in fresh])
        for got, want in zip(static_out, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # same kernels, same order: bitwise equal


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_captured_kl_of_long_rows_replays_like_eager(backend):
    """Rows long enough to be cut into chunks: the chunk states' workspace comes from the caching allocator, so the
    two-kernel forward is captured too."""
    skip_unless_runnable(backend, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    static = [torch.randn(4, 50000, generator=gen, device="cuda").requires_grad_() for _ in range(2)]

    def run(s, t):
        loss = zskt_fast.kl_divergence(s, t, temperature=2.0, reduction="batchmean", backend=backend)
        return [loss, *torch.autograd.grad(loss, [s, t])]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run(*static)
    fresh = [torch.randn(4, 50000, generator=gen, device="cuda") * 5 for _ in range(2)]
    with torch.no_grad():
        for dst, src in zip(static, fresh):
            dst.copy_(src)
    graph.replay()
    expected = run(*[x.clone().requires_grad_() for x in fresh])
    for got, want in zip(static_out, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
