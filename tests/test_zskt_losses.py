"""zskt_student_loss, zskt_generator_loss and the nn wrappers: composition, torch.compile, memory."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import zskt_fast
from zskt_fast.ops import reference

from conftest import as_reference, assert_close_to_reference, make_input

# WRN-16-1 student / WRN-40-2 teacher group shapes at a small batch.
STUDENT = [(4, 16, 32, 32), (4, 32, 16, 16), (4, 64, 8, 8)]
TEACHER = [(4, 32, 32, 32), (4, 64, 16, 16), (4, 128, 8, 8)]


def make_batch(device, dtype=torch.float32, layout="contiguous", num_classes=10):
    b = STUDENT[0][0]
    s_logits = make_input((b, num_classes), dtype, device, seed=1, scale=3)
    t_logits = make_input((b, num_classes), dtype, device, seed=2, scale=3)
    s_feats = [make_input(shape, dtype, device, layout=layout, seed=10 + i) for i, shape in enumerate(STUDENT)]
    t_feats = [make_input(shape, dtype, device, layout=layout, seed=20 + i) for i, shape in enumerate(TEACHER)]
    return s_logits, t_logits, s_feats, t_feats


def reference_student_loss(s_logits, t_logits, s_feats, t_feats, beta, temperature, reduction):
    return (reference.kl_divergence(s_logits, t_logits, temperature, reduction)
            + reference.attention_transfer(s_feats, t_feats, beta))


@pytest.mark.parametrize("reduction", zskt_fast.REDUCTIONS)
def test_student_loss_matches_reference(fused, reduction):
    backend, device = fused
    inputs = make_batch(device)
    out = zskt_fast.zskt_student_loss(*inputs, beta=250.0, temperature=2.0, reduction=reduction, backend=backend)
    ref_inputs = [as_reference(inputs[0]), as_reference(inputs[1]), [as_reference(x) for x in inputs[2]],
                  [as_reference(x) for x in inputs[3]]]
    ref = reference_student_loss(*ref_inputs, 250.0, 2.0, reduction)
    assert_close_to_reference(out, ref, torch.float32, "loss")
    out.sum().backward()
    ref.sum().backward()
    flat = [inputs[0], inputs[1], *inputs[2], *inputs[3]]
    flat_ref = [ref_inputs[0], ref_inputs[1], *ref_inputs[2], *ref_inputs[3]]
    for x, x_ref in zip(flat, flat_ref):
        assert_close_to_reference(x.grad, x_ref.grad, torch.float32, "grad")


def test_student_loss_beta_zero_is_kl_alone(fused):
    backend, device = fused
    s_logits, t_logits, s_feats, t_feats = make_batch(device)
    out = zskt_fast.zskt_student_loss(s_logits, t_logits, s_feats, t_feats, beta=0.0, backend=backend)
    torch.testing.assert_close(out, zskt_fast.kl_divergence(s_logits, t_logits, backend="eager"))
    out.backward()
    assert all(x.grad is None for x in s_feats + t_feats)  # no attention kernel ran


def test_generator_loss_is_negative_kl_with_gradients_to_both(fused):
    backend, device = fused
    s = make_input((6, 10), torch.float32, device, seed=3)
    t = make_input((6, 10), torch.float32, device, seed=4)
    out = zskt_fast.zskt_generator_loss(s, t, temperature=1.0, backend=backend)
    s_ref, t_ref = as_reference(s), as_reference(t)
    ref = -reference.kl_divergence(s_ref, t_ref, 1.0, "mean")
    assert_close_to_reference(out, ref, torch.float32, "loss")
    out.backward()
    ref.backward()
    assert_close_to_reference(s.grad, s_ref.grad, torch.float32, "grad")
    assert_close_to_reference(t.grad, t_ref.grad, torch.float32, "grad")


def test_nn_wrappers_match_functions(fused):
    backend, device = fused
    s_logits, t_logits, s_feats, t_feats = make_batch(device)
    pairs = [
        (zskt_fast.nn.KLDivergence(temperature=3.0, reduction="sum", backend=backend)(s_logits, t_logits),
         zskt_fast.kl_divergence(s_logits, t_logits, temperature=3.0, reduction="sum", backend="eager")),
        (zskt_fast.nn.AttentionTransfer(beta=10.0, backend=backend)(s_feats, t_feats),
         zskt_fast.attention_transfer(s_feats, t_feats, beta=10.0, backend="eager")),
        (zskt_fast.nn.ZSKTStudentLoss(beta=5.0, backend=backend)(s_logits, t_logits, s_feats, t_feats),
         zskt_fast.zskt_student_loss(s_logits, t_logits, s_feats, t_feats, beta=5.0, backend="eager")),
        (zskt_fast.nn.ZSKTGeneratorLoss(backend=backend)(s_logits, t_logits),
         zskt_fast.zskt_generator_loss(s_logits, t_logits, backend="eager")),
    ]
    for out, expected in pairs:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert "beta=5.0" in repr(zskt_fast.nn.ZSKTStudentLoss(beta=5.0))


@pytest.mark.slow
def test_torch_compile_fullgraph(fused):
    """The student and generator losses compile without graph breaks and give the eager values and gradients."""
    backend, device = fused
    torch._dynamo.reset()

    def student_step(s_logits, t_logits, s_feats, t_feats):
        return zskt_fast.zskt_student_loss(s_logits, t_logits, s_feats, t_feats, beta=250.0, backend=backend)

    def generator_step(s_logits, t_logits):
        return zskt_fast.zskt_generator_loss(s_logits, t_logits, temperature=2.0, backend=backend)

    for fn, make in ((student_step, lambda: make_batch(device)),
                     (generator_step, lambda: make_batch(device)[:2])):
        compiled = torch.compile(fn, fullgraph=True)
        inputs, inputs_eager = make(), make()
        out, expected = compiled(*inputs), fn(*inputs_eager)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        out.backward()
        expected.backward()
        flat = [x for item in inputs for x in (item if isinstance(item, list) else [item])]
        flat_eager = [x for item in inputs_eager for x in (item if isinstance(item, list) else [item])]
        for x, y in zip(flat, flat_eager):
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)


class _AllocationCounter(TorchDispatchMode):
    """Adds up the bytes of every tensor an ATen or custom op returns (an upper bound of what was allocated)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(x, torch.Tensor) and func not in (torch.ops.aten.detach.default, torch.ops.aten.view.default,
                                                            torch.ops.aten.alias.default):
                self.bytes += x.untyped_storage().nbytes() if x._base is None else 0
                self.largest = max(self.largest, x.numel() * x.element_size())
        return out


def _extra_bytes(backend):
    s_logits, t_logits, s_feats, t_feats = make_batch("cpu")
    t_feats = [x.detach() for x in t_feats]
    t_logits = t_logits.detach()
    counter = _AllocationCounter()
    with counter:
        zskt_fast.zskt_student_loss(s_logits, t_logits, s_feats, t_feats, backend=backend).backward()
    grad_bytes = sum(x.numel() * x.element_size() for x in s_feats) + s_logits.numel() * 4
    return counter.bytes - grad_bytes, s_feats


def test_fused_memory_is_gradients_plus_per_position_buffers():
    """Forward+backward allocates the student gradients plus O(B*H*W) per layer; eager materialises [B,C,H,W] maps."""
    extra, s_feats = _extra_bytes("cpu")
    per_position = sum(x.shape[0] * x.shape[2] * x.shape[3] for x in s_feats) * 4
    assert 0 < extra <= 6 * per_position + 4096, (extra, per_position)
    extra_eager, _ = _extra_bytes("eager")
    assert extra_eager > 4 * extra  # the measurement sees the temporaries the fused path avoids


@pytest.mark.slow
def test_triton_ops_load_inside_a_compiled_region():
    """The Triton kernels are imported on first use; when that first use is inside torch.compile(fullgraph=True),
    the loading runs while tracing instead of breaking the graph. A fresh interpreter, so nothing is loaded yet."""
    import subprocess
    import sys

    from conftest import HAS_CUDA, skip_unless_runnable

    device = "cuda" if HAS_CUDA else "cpu"
    skip_unless_runnable("triton", device)
    code = f"""
import os, sys
os.environ.setdefault("TRITON_INTERPRET", "0" if {HAS_CUDA} else "1")
import torch, zskt_fast
assert "triton" not in sys.modules
s, t = torch.randn(4, 10, device="{device}"), torch.randn(4, 10, device="{device}")
fs = [torch.randn(4, 3, 5, 7, device="{device}")]
ft = [torch.randn(4, 6, 5, 7, device="{device}")]
loss = lambda *a: zskt_fast.zskt_student_loss(*a, backend="triton")
compiled = torch.compile(loss, fullgraph=True)(s, t, fs, ft)
torch.testing.assert_close(compiled, zskt_fast.zskt_student_loss(s, t, fs, ft, backend="eager"), rtol=1e-5, atol=1e-6)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
