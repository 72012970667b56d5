"""Shared test helpers: which fused backends can run here, tolerances per dtype, and float64 references."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import torch

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter, which must be chosen before
# Triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# torch.compile's on-disk caches are keyed on the graph, not on the ops' fake kernels: a cache left by an earlier
# version of these ops on the same machine could replay code compiled for other output shapes. Each session compiles
# into its own folder (inherited by the programs the tests start), removed when the session ends.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _session_cache = tempfile.mkdtemp(prefix="zskt-fast-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _session_cache
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "triton"))

import pytest  # noqa: E402

from zskt_fast.ops import _library

HAS_CUDA = torch.cuda.is_available()

# (backend, device): every fused backend, each on the device it runs on. Those that cannot run here are skipped with
# the reason, so a CPU-only run shows what it did not check.
FUSED = [
    pytest.param(("cpu", "cpu"), id="cpu"),
    pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.gpu),
    pytest.param(("triton", "cuda"), id="triton-cuda", marks=pytest.mark.gpu),
    pytest.param(("triton", "cpu"), id="triton-interpreter"),
]


@functools.cache
def triton_interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernels on this stack (an old Triton with a new numpy), or None."""
    from triton_interpreter_probe import problem

    return problem()


def skip_unless_runnable(backend: str, device: str) -> None:
    if backend == "triton" and device == "cpu" and HAS_CUDA:
        pytest.skip("the Triton interpreter is exercised on machines without a GPU; this one runs Triton on the GPU")
    if device == "cuda" and not HAS_CUDA:
        pytest.skip(f"backend {backend!r} needs a CUDA device and none is present")
    reason = _library._why_unavailable(backend, torch.device(device))
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable: {reason}")
    if backend == "triton" and device == "cpu" and triton_interpreter_problem() is not None:
        pytest.skip(triton_interpreter_problem())


def skip_unsupported_dtype(backend: str, device: str, dtype: torch.dtype) -> None:
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter has no bfloat16 (the GPU run covers it)")


@pytest.fixture(params=FUSED)
def fused(request):
    """(backend, device) of a fused backend that can run here."""
    backend, device = request.param
    skip_unless_runnable(backend, device)
    return backend, device


# Tolerances for a fused result in `dtype` against the float64 reference of the same (already rounded) inputs.
# Losses accumulate in float32 whatever the input dtype; gradients are rounded to the input dtype on the way out.
LOSS_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-6), torch.bfloat16: (2e-5, 1e-6),
            torch.float16: (2e-5, 1e-6)}
GRAD_TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-7), torch.bfloat16: (1.6e-2, 1e-5),
            torch.float16: (2e-3, 1e-6)}


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str) -> None:
    rtol, atol = (LOSS_TOL if kind == "loss" else GRAD_TOL)[dtype]
    # Gradients: atol relative to the gradient's own scale, so tiny gradients are not compared against nothing.
    if kind == "grad":
        atol = atol + rtol * float(expected.abs().max()) * 0.1
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def check_loss_and_gradients(out, ref, grads, ref_grads, inputs, dtype: torch.dtype) -> None:
    """A fused loss and its inputs' gradients against the float64 reference: a scalar in float32 (float64 for float64
    inputs), gradients in each input's dtype and shape, all within the tolerances of `dtype`."""
    assert out.dim() == 0 and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close_to_reference(out, ref, dtype, "loss")
    for x, g, g_ref in zip(inputs, grads, ref_grads):
        assert g is not None and g.dtype == x.dtype and g.shape == x.shape
        assert_close_to_reference(g, g_ref, dtype, "grad")


def make_input(shape, dtype, device, *, layout: str = "contiguous", seed: int = 0, scale: float = 1.0):
    """A leaf tensor requiring grad with the given memory layout: contiguous, channels_last, strided (every other
    element of a larger tensor along dim 1) or transposed (a dense but permuted layout)."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "strided":
        big = list(shape)
        big[1] = 2 * shape[1]
        x = (torch.randn(big, generator=gen, dtype=torch.float64) * scale).to(dtype)[:, ::2]
    elif layout == "transposed":
        perm_shape = [shape[1], shape[0], *shape[2:]]
        x = (torch.randn(perm_shape, generator=gen, dtype=torch.float64) * scale).to(dtype).transpose(0, 1)
    else:
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device)
    assert tuple(x.shape) == tuple(shape)
    return x.detach().requires_grad_()


def float64_teacher_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """The gradient of each row's KL with respect to the teacher's logits, in float64 (on the CPU). Autograd's
    p_c (d_c - KL), d = log p_t - log p_s, cancels in float64 too where one class dominates; written as
    p_c sum_j p_j (d_c - d_j) / T (the p_j add up to 1) nothing cancels. Memory B * C^2."""
    s, t = student_logits.detach().double().cpu(), teacher_logits.detach().double().cpu()
    log_ps, log_pt = torch.log_softmax(s / temperature, 1), torch.log_softmax(t / temperature, 1)
    p_t, d = log_pt.exp(), log_pt - log_ps
    return p_t * (p_t[:, None, :] * (d[:, :, None] - d[:, None, :])).sum(2) / temperature


def as_reference(x: torch.Tensor) -> torch.Tensor:
    """The same values in float64 on the CPU, as a fresh leaf."""
    return x.detach().double().cpu().requires_grad_()


@pytest.fixture
def float64_default():
    """float64 as the default dtype for one test: networks built inside it compare without float32 rounding."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory):
    """A private teacher cache for the session, holding the digits WRN-16-2 teacher (pretrained once, seconds)."""
    from zskt_fast.engine.settings.config import PretrainConfig
    from zskt_fast.engine.experiments.supervised import train_supervised
    from zskt_fast.engine.teachers import default_teacher_path

    folder = tmp_path_factory.mktemp("teacher-cache")
    previous = os.environ.get("ZSKT_FAST_CACHE")
    os.environ["ZSKT_FAST_CACHE"] = str(folder)
    train_supervised(PretrainConfig.from_flat({"dataset": "digits", "arch": "wrn-16-2", "device": "cpu"}),
                     default_teacher_path("digits", "wrn-16-2"), progress=False)
    yield folder
    if previous is None:
        os.environ.pop("ZSKT_FAST_CACHE", None)
    else:
        os.environ["ZSKT_FAST_CACHE"] = previous


class Killed(Exception):
    """A test's stand-in for a kill: raised by a run's callback, it ends the run with nothing written since its last
    checkpoint."""


def kill_after(iterations: int):
    """A run callback that kills the run once `iterations` iterations (or steps) are done, before their checkpoint."""
    def callback(done, *_):
        if done == iterations:
            raise Killed(f"killed after {done}")
    return callback


def algorithm_one(teacher, student, generator, settings=None, *, objectives=None, seed: int = 0, device="cpu",
                  graphed: bool = False):
    """Algorithm 1's steps for settings parts as a test writes them (StepSettings, ObjectiveSettings; default:
    ZSKT's), resolved once here as distill resolves them."""
    from zskt_fast.engine.methods.generator_strategy import algorithm_one_steps
    from zskt_fast.engine.settings.parts import Context
    from zskt_fast.engine.settings.zero_shot import ObjectiveSettings, StepSettings
    device = torch.device(device)
    objectives = (objectives or ObjectiveSettings()).resolved()
    steps = (settings or StepSettings()).resolved(Context(device=device, method=objectives.method))
    return algorithm_one_steps(teacher, student, generator, objectives, steps, device=device, seed=seed,
                               graphed=graphed)


class TinyNet(torch.nn.Module):
    """A one-channel classifier with one BatchNorm layer, small enough for whole runs in a test."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn, self.fc = torch.nn.BatchNorm2d(4), torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def metric_records(folder) -> list[dict]:
    """A run folder's metrics.jsonl records without their timings (what two runs of the same work share)."""
    import json
    return [{k: v for k, v in json.loads(line).items() if k != "seconds_per_iteration"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def pool_objective_by_hand(teacher, student, images, targets, *, bn, one_hot, adversarial):
    """bn x the BN prior (the input of the tiny networks' one BatchNorm) + one_hot x CE(t, targets) + adversarial x
    the decision-adversarial KL, from their formulas: the pool methods' generator objective, for hand computations."""
    import torch.nn.functional as F
    from zskt_fast.ops.reference import prior_of_statistics
    seen = {}
    handle = teacher.bn.register_forward_pre_hook(lambda m, a: seen.setdefault("bn", a[0]))
    t, _ = teacher(images)
    handle.remove()
    s, _ = student(images)
    h = seen["bn"]
    prior = prior_of_statistics([(h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False))], [teacher.bn.running_mean],
                                [teacher.bn.running_var])
    p_t, p_s = t.softmax(1), s.softmax(1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1) * (s.argmax(1) == t.argmax(1)).to(t.dtype)
    return bn * prior + one_hot * F.cross_entropy(t, targets) + adversarial * -kl.mean()


def warmed_teacher(net: torch.nn.Module, image_shape=(1, 4, 4)) -> torch.nn.Module:
    """A tiny teacher whose BatchNorm running statistics are away from their defaults (three batches of uniform
    images in [0, 2]), in eval mode without gradients, as a trained teacher is used."""
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, *image_shape) * 2)
    return net.eval().requires_grad_(False)
