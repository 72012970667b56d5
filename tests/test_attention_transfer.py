"""attention_transfer: every fused backend against the float64 reference of the formula."""
import pytest
import torch
import torch.nn.functional as F

import zskt_fast
from zskt_fast.ops import reference

from conftest import as_reference, assert_close_to_reference, make_input, skip_unsupported_dtype
from conftest import check_loss_and_gradients as check

# (B, C_student, C_teacher, H, W): B = 1, C = 1, H*W = 1, H*W not a power of two, mixed channel counts.
SHAPES = [(1, 1, 1, 1, 1), (1, 1, 3, 4, 4), (2, 3, 5, 7, 5), (4, 16, 32, 8, 8), (3, 2, 2, 1, 1), (2, 8, 4, 17, 3)]
LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def run_both(backend, device, layers, dtype, *, beta=250.0, layouts=("contiguous", "contiguous")):
    """layers: [(B, Cs, Ct, H, W), ...]. Runs the fused op and the float64 reference, both forward and backward."""
    student, teacher = [], []
    for i, (b, cs, ct, h, w) in enumerate(layers):
        student.append(make_input((b, cs, h, w), dtype, device, layout=layouts[0], seed=10 + i))
        teacher.append(make_input((b, ct, h, w), dtype, device, layout=layouts[1], seed=20 + i))
    out = zskt_fast.attention_transfer(student, teacher, beta=beta, backend=backend)
    student_ref = [as_reference(x) for x in student]
    teacher_ref = [as_reference(x) for x in teacher]
    ref = reference.attention_transfer(student_ref, teacher_ref, beta)
    out.backward()
    ref.backward()
    grads = [x.grad for x in student + teacher]
    ref_grads = [x.grad for x in student_ref + teacher_ref]
    return out, ref, grads, ref_grads, student + teacher


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_float32(fused, shape):
    backend, device = fused
    check(*run_both(backend, device, [shape], torch.float32), torch.float32)


@pytest.mark.parametrize("student_layout", LAYOUTS)
@pytest.mark.parametrize("teacher_layout", ["contiguous", "channels_last", "strided"])
def test_layouts(fused, student_layout, teacher_layout):
    backend, device = fused
    result = run_both(backend, device, [(3, 6, 10, 5, 7)], torch.float32, layouts=(student_layout, teacher_layout))
    check(*result, torch.float32)
    student_grad = result[2][0]
    if student_layout == "channels_last":  # the gradient keeps the layout it is read in
        assert student_grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(fused, dtype):
    backend, device = fused
    skip_unsupported_dtype(backend, device, dtype)
    layers = [(4, 8, 16, 8, 8), (4, 16, 32, 4, 4), (2, 6, 10, 5, 7)]  # 6 and 10 channels: 1 / C not a float32
    for layouts in (("contiguous", "contiguous"), ("channels_last", "channels_last")):
        check(*run_both(backend, device, layers, dtype, layouts=layouts), dtype)


def test_wrn_shapes_three_layers(fused):
    """The WRN-40-2 teacher / WRN-16-1 student layer shapes (batch 8), summed over the three groups."""
    backend, device = fused
    layers = [(8, 16, 32, 32, 32), (8, 32, 64, 16, 16), (8, 64, 128, 8, 8)]
    check(*run_both(backend, device, layers, torch.float32), torch.float32)


@pytest.mark.parametrize("beta", [0.0, 1.0, 1000.0])
def test_beta(fused, beta):
    backend, device = fused
    check(*run_both(backend, device, [(2, 3, 4, 5, 5)], torch.float32, beta=beta), torch.float32)


def test_all_zero_sample_takes_the_epsilon_branch(fused):
    """A sample whose attention map is all zero has ||a|| <= eps: F.normalize divides by eps and has no projection."""
    backend, device = fused
    s = make_input((3, 4, 5, 5), torch.float64, device, seed=30)
    t = make_input((3, 6, 5, 5), torch.float64, device, seed=31)
    with torch.no_grad():
        s[1].zero_()
        t[2].zero_()
    out = zskt_fast.attention_transfer([s], [t], backend=backend)
    s_ref, t_ref = as_reference(s), as_reference(t)
    ref = reference.attention_transfer([s_ref], [t_ref])
    out.backward()
    ref.backward()
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(s.grad.cpu(), s_ref.grad)
    torch.testing.assert_close(t.grad.cpu(), t_ref.grad)


def test_gradient_formula_of_the_spec():
    """dA_s = g_a * 2 A_s / C with g_a = (g_q - q_s <q_s, g_q>) / ||a_s||, g_q = 2 (q_s - q_t) / (B H W)."""
    B, C, H, W = 3, 4, 5, 6
    s = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, 7, H, W, dtype=torch.float64)
    zskt_fast.attention_transfer([s], [t], beta=1.0).backward()
    a_s = s.detach().pow(2).mean(1).flatten(1)
    norm = a_s.norm(dim=1, keepdim=True)
    q_s, q_t = a_s / norm, F.normalize(t.pow(2).mean(1).flatten(1), dim=1)
    g_q = 2 * (q_s - q_t) / (B * H * W)
    g_a = (g_q - q_s * (q_s * g_q).sum(1, keepdim=True)) / norm
    torch.testing.assert_close(s.grad, g_a.view(B, 1, H, W) * 2 * s.detach() / C)


def test_gradcheck_float64(fused):
    backend, device = fused
    for layouts in (("contiguous", "contiguous"), ("channels_last", "strided")):
        s = make_input((2, 3, 3, 5), torch.float64, device, layout=layouts[0], seed=40)
        t = make_input((2, 4, 3, 5), torch.float64, device, layout=layouts[1], seed=41)
        assert torch.autograd.gradcheck(lambda a, b: zskt_fast.attention_transfer([a], [b], beta=3.0,
                                                                                backend=backend), (s, t))


def test_only_requested_gradients(fused):
    backend, device = fused
    s = make_input((2, 3, 4, 4), torch.float32, device, seed=50)
    t = make_input((2, 5, 4, 4), torch.float32, device, seed=51).detach()
    zskt_fast.attention_transfer([s], [t], backend=backend).backward()
    assert s.grad is not None and t.grad is None


def test_mixed_dtypes_are_promoted(fused):
    backend, device = fused
    skip_unsupported_dtype(backend, device, torch.bfloat16)
    s = make_input((2, 3, 4, 4), torch.bfloat16, device, seed=52)
    t = make_input((2, 5, 4, 4), torch.float16, device, seed=53)
    out = zskt_fast.attention_transfer([s], [t], backend=backend)
    ref = reference.attention_transfer([as_reference(s)], [as_reference(t)])
    assert_close_to_reference(out, ref, torch.float32, "loss")
    out.backward()
    assert s.grad.dtype == torch.bfloat16 and t.grad.dtype == torch.float16


def test_deterministic_and_independent_of_thread_count(fused):
    backend, device = fused
    s = make_input((16, 16, 16, 16), torch.float32, device, seed=60)
    t = make_input((16, 32, 16, 16), torch.float32, device, seed=61)
    results = []
    threads = torch.get_num_threads()
    for n in (1, max(2, threads)):
        torch.set_num_threads(n)
        s.grad = t.grad = None
        out = zskt_fast.attention_transfer([s], [t], backend=backend)
        out.backward()
        results.append((out.detach().clone(), s.grad.clone(), t.grad.clone()))
    torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_opcheck(fused, layout, dtype):
    """Schema, fake kernel (shapes, dtypes and strides), autograd registration and AOT dispatch."""
    backend, device = fused
    skip_unsupported_dtype(backend, device, dtype)
    suffix = "_triton" if backend == "triton" else ""
    forward = getattr(torch.ops.zskt_fast, "attention_transfer_forward" + suffix)
    backward = getattr(torch.ops.zskt_fast, "attention_transfer_backward" + suffix)
    s = make_input((2, 3, 4, 5), dtype, device, layout=layout, seed=80)
    t = make_input((2, 6, 4, 5), dtype, device, seed=81)
    torch.library.opcheck(forward, (s, t))
    d, q_s, q_t, n_s, n_t = forward(s.detach(), t.detach())
    torch.library.opcheck(backward,
                          (torch.randn_like(d), s.detach(), q_s, q_t, n_s))
