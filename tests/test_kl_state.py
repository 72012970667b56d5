"""The CUDA KL kernels' arithmetic (csrc/kl_state.h: the one-sweep state, its merges by warps and blocks, the gradient
formulas) emulated on the host in the kernels' order (tests/kl_state_emulation.cpp), against the float64 reference:
machines without a GPU test it too. The kernels themselves run in test_kl_divergence.py where a GPU exists."""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from zskt_fast.ops import reference

from conftest import float64_teacher_gradient

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler on this machine to build the emulation")
    binary = tmp_path_factory.mktemp("kl_state") / "kl_state_emulation"
    # fused multiply-adds allowed, as nvcc does
    subprocess.run([compiler, "-std=c++17", "-O2", "-ffp-contract=fast", str(HERE / "kl_state_emulation.cpp"), "-o",
                    str(binary)], check=True)

    def run(s, t, upstream, temperature, mode, chunk_size=0):
        B, C = s.shape
        values = [f"{B} {C} {float(temperature).hex()} {mode} {chunk_size}"]
        values += [float(x).hex() for x in torch.cat([s.flatten(), t.flatten(), upstream]).tolist()]
        out = subprocess.run([str(binary)], input="\n".join(values), capture_output=True, text=True, check=True)
        numbers = torch.tensor([float.fromhex(x) for x in out.stdout.split()], dtype=torch.float32)
        rows = numbers[: 7 * B].view(B, 7)
        grads = numbers[7 * B:].view(2, B, C)
        return rows[:, 0], rows[:, 1:3], rows[:, 3:7], grads[0], grads[1]

    return run


MODES = [("warp", 0), ("chunks", 4096), ("chunks", 1000)]


def reference_results(s, t, upstream, temperature):
    """KL rows and gradients in float64 from the float32 inputs; the teacher gradient written as
    p_c sum_j p_j (d_c - d_j), which does not cancel where one class dominates."""
    s64, t64 = s.double().requires_grad_(), t.double().requires_grad_()
    rows = reference.kl_divergence(s64, t64, temperature, "none")
    grad_s = torch.autograd.grad((rows * upstream.double()).sum(), s64)[0]
    grad_t = float64_teacher_gradient(s, t, temperature) * upstream.double()[:, None]
    return rows.detach(), grad_s, grad_t


def eager_float32(s, t, upstream, temperature):
    a, b = s.clone().requires_grad_(), t.clone().requires_grad_()
    rows = reference.kl_divergence(a, b, temperature, "none")
    grads = torch.autograd.grad((rows * upstream).sum(), [a, b])
    return rows.detach(), *grads


def relative_error(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("mode, chunk_size", MODES, ids=lambda m: str(m))
@pytest.mark.parametrize("shape, scale, temperature", [((7, 10), 3.0, 2.0), ((3, 5000), 10.0, 0.5),
                                                       ((2, 9000), 100.0, 4.0), ((1, 1), 1.0, 1.0)],
                         ids=lambda p: "x".join(map(str, p)) if isinstance(p, tuple) else str(p))
def test_emulated_kernels_match_the_reference(emulator, mode, chunk_size, shape, scale, temperature):
    gen = torch.Generator().manual_seed(shape[1])
    s = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).float()
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).float()
    upstream = torch.randn(shape[0], generator=gen)
    rows, stats_s, stats_t, grad_s, grad_t = emulator(s, t, upstream, temperature, mode, chunk_size)
    ref = reference_results(s, t, upstream, temperature)
    eager = eager_float32(s, t, upstream, temperature)
    for name, x, r, e in zip(("value", "student gradient", "teacher gradient"), (rows, grad_s, grad_t), ref, eager):
        assert relative_error(x, r) <= 10 * relative_error(e, r) + 2e-6, name
    # the statistics: each row's maxima, log-sums, the student logit at the teacher's maximum
    assert torch.equal(stats_s[:, 0], s.max(1).values) and torch.equal(stats_t[:, 0], t.max(1).values)
    log_sum_s = torch.logsumexp((s.double() - s.max(1, keepdim=True).values) / temperature, 1)
    torch.testing.assert_close(stats_s[:, 1], log_sum_s.float())
    assert torch.equal(stats_t[:, 2], s.gather(1, t.argmax(1, keepdim=True))[:, 0])


@pytest.mark.parametrize("mode, chunk_size", MODES, ids=lambda m: str(m))
@pytest.mark.parametrize("scale, temperature", [(100.0, 1.0), (100.0, 4.0), (10.0, 0.5)])
def test_emulated_saturated_rows_whose_maxima_lie_far_apart(emulator, mode, chunk_size, scale, temperature):
    """As test_kl_divergence's case of that name: the teacher's dominant class early, the student's maximum late, and
    a teacher maximum that rises in a later chunk than the first."""
    gen = torch.Generator().manual_seed(int(scale + 10 * temperature))
    s = (torch.randn(2, 6000, generator=gen, dtype=torch.float64) * scale).float()
    t = (torch.randn(2, 6000, generator=gen, dtype=torch.float64) * scale).float()
    t[0, 5] = t[0].max() + 5 * scale
    s[0, -5] = s[0].max() + 5 * scale
    t[1, 4500] = t[1].max() + 5 * scale
    s[1, 10] = s[1].max() + 5 * scale
    upstream = torch.ones(2)
    rows, _, _, grad_s, grad_t = emulator(s, t, upstream, temperature, mode, chunk_size)
    ref = reference_results(s, t, upstream, temperature)
    eager = eager_float32(s, t, upstream, temperature)
    for b in range(2):
        for name, x, r, e in zip(("value", "student gradient", "teacher gradient"), (rows, grad_s, grad_t), ref,
                                 eager):
            assert relative_error(x[b], r[b]) <= 10 * relative_error(e[b], r[b]) + 2e-6, (b, name)


@pytest.mark.parametrize("mode, chunk_size", MODES, ids=lambda m: str(m))
def test_emulated_masked_classes_and_non_finite_logits(emulator, mode, chunk_size):
    """Classes -inf in both logit sets drop out with zero gradients, also where whole chunks are masked; a finite
    teacher logit where the student is -inf makes the KL +inf; a NaN logit makes it NaN; ties of the teacher's maximum
    across chunks pick one reference class."""
    C = 9000
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(5, C, generator=gen) * 3
    t = torch.randn(5, C, generator=gen) * 3
    masked = torch.zeros(C, dtype=torch.bool)
    masked[: C // 2] = True
    masked[C // 2 + 1:: 7] = True
    s[:, masked] = t[:, masked] = float("-inf")
    t[3, C - 1] = t[3, C - 2001] = t[3, ~masked].max() + 1  # a tie of the maximum, classes in different chunks
    upstream = torch.ones(5)
    rows, _, _, grad_s, grad_t = emulator(s, t, upstream, 2.0, mode, chunk_size)
    kept = ~masked
    ref = reference_results(s[:, kept], t[:, kept], upstream, 2.0)
    for x, r in zip((rows, grad_s[:, kept], grad_t[:, kept]), ref):
        torch.testing.assert_close(x.double(), r, rtol=1e-4, atol=1e-6)
    assert torch.equal(grad_s[:, masked], torch.zeros(5, int(masked.sum())))
    assert torch.equal(grad_t[:, masked], torch.zeros(5, int(masked.sum())))

    s[1, C - 1], t[1, C - 1] = float("-inf"), 5.0  # teacher mass where the student has none
    s[2, C - 1] = float("nan")
    t[4, C // 2 + 3] = float("nan")
    rows = emulator(s, t, upstream, 2.0, mode, chunk_size)[0]
    assert rows[1] == float("inf") and rows[2].isnan() and rows[4].isnan()
    assert torch.isfinite(rows[[0, 3]]).all()
