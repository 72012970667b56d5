"""bn_statistics_prior: every fused backend against the float64 reference of the formula (DeepInversion / DFQ's batch-
norm statistics prior), over odd shapes, layouts and dtypes; gradcheck, opcheck, determinism and argument errors."""
import pytest
import torch

import zskt_fast
from zskt_fast.ops import reference

from conftest import as_reference, assert_close_to_reference, make_input, skip_unsupported_dtype
from conftest import check_loss_and_gradients as check

# (B, C, H, W): B = 1, C = 1, H*W = 1, H*W not a power of two, a WRN-sized map.
SHAPES = [(1, 1, 1, 1), (1, 3, 4, 4), (2, 3, 7, 5), (4, 16, 8, 8), (3, 2, 1, 1), (2, 8, 17, 3), (1, 5, 3, 3)]
LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _running(channels, seed, dtype=torch.float32):
    """Running statistics that are not the batch's: a mean around 0.3 and a variance around 1.5."""
    gen = torch.Generator().manual_seed(seed)
    return (0.3 + 0.5 * torch.randn(channels, generator=gen, dtype=torch.float64)).to(dtype), \
        (1.5 + torch.rand(channels, generator=gen, dtype=torch.float64)).to(dtype)


def run_both(backend, device, shapes, dtype, *, layouts=None, shift=0.0):
    """The fused op and the float64 reference on the same (already rounded) inputs, forward and backward."""
    layouts = layouts or ["contiguous"] * len(shapes)
    inputs, means, variances = [], [], []
    for i, (shape, layout) in enumerate(zip(shapes, layouts)):
        x = make_input(shape, dtype, device, layout=layout, seed=10 + i)
        if shift:
            with torch.no_grad():
                x += shift
        inputs.append(x)
        mean, var = _running(shape[1], 100 + i)
        means.append(mean.to(device))
        variances.append(var.to(device))
    out = zskt_fast.bn_statistics_prior(inputs, means, variances, backend=backend)
    refs = [as_reference(x) for x in inputs]
    ref = reference.bn_statistics_prior(refs, [m.double().cpu() for m in means], [v.double().cpu() for v in variances])
    out.backward()
    ref.backward()
    return out, ref, [x.grad for x in inputs], [x.grad for x in refs], inputs


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_float64_and_float32(fused, shape):
    backend, device = fused
    for dtype in (torch.float64, torch.float32):
        check(*run_both(backend, device, [shape], dtype), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(fused, layout):
    backend, device = fused
    result = run_both(backend, device, [(3, 6, 5, 7), (2, 20, 3, 3)], torch.float32, layouts=[layout, layout])
    check(*result, torch.float32)
    if layout == "channels_last":  # the gradient keeps the layout the map is read in
        assert all(g.is_contiguous(memory_format=torch.channels_last) for g in result[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(fused, dtype):
    backend, device = fused
    skip_unsupported_dtype(backend, device, dtype)
    shapes = [(4, 8, 8, 8), (4, 16, 4, 4), (2, 6, 5, 7)]
    for layout in ("contiguous", "channels_last"):
        check(*run_both(backend, device, shapes, dtype, layouts=[layout] * 3), dtype)


def test_a_large_mean_does_not_cost_the_variance_its_digits(fused):
    """Maps whose mean (1000) is large against their spread (1): a variance from plain sums of x and x^2 in float32
    would lose about six digits; the kernels' shifted sums and block merges keep it to the float32 tolerance."""
    backend, device = fused
    out, ref, grads, ref_grads, inputs = run_both(backend, device, [(4, 5, 9, 9)], torch.float32, shift=1000.0)
    x = inputs[0].detach()
    _, var = zskt_fast.bn_statistics(x, backend=backend)
    _, var_ref = reference.bn_statistics(x.double().cpu())
    torch.testing.assert_close(var.double().cpu(), var_ref, rtol=1e-4, atol=0)
    assert_close_to_reference(out, ref, torch.float32, "loss")
    # The gradient holds x - mean, formed in float32 at x ~ 1000: rounded at ulp(1000) = 6e-5 of the unit spread.
    scale = float(ref_grads[0].abs().max())
    torch.testing.assert_close(grads[0].double().cpu(), ref_grads[0], rtol=1e-4, atol=1e-3 * scale)


def test_wrn_teacher_shapes(fused):
    """The inputs of WRN-16-2's batch-norm layers on 32x32 images (batch 8): 16 to 128 channels, 32x32 to 8x8."""
    backend, device = fused
    batch = 2 if _interpreted(backend, device) else 8
    shapes = [(batch, 16, 32, 32), (batch, 32, 32, 32), (batch, 32, 16, 16), (batch, 64, 16, 16), (batch, 64, 8, 8),
              (batch, 128, 8, 8)]
    check(*run_both(backend, device, shapes, torch.float32), torch.float32)


def test_statistics_are_the_batch_norm_layers_own(fused):
    """mean and var equal what a BatchNorm2d in training mode normalises with (biased variance)."""
    backend, device = fused
    x = make_input((5, 7, 6, 3), torch.float64, device, seed=3).detach()
    mean, var = zskt_fast.bn_statistics(x, backend=backend)
    norm = torch.nn.BatchNorm2d(7, momentum=1.0, dtype=torch.float64).to(device)
    norm(x)  # momentum 1: running_mean = batch mean, running_var = unbiased batch variance
    n = 5 * 6 * 3
    torch.testing.assert_close(mean, norm.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(var * n / (n - 1), norm.running_var, rtol=1e-12, atol=1e-14)


def test_gradient_formula():
    """d prior / dx = g_mean / N + g_var * 2 (x - mean) / N with g_mean = (mean - rm) / ||rm - mean||,
    g_var = (var - rv) / ||rv - var||."""
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    rm, rv = _running(4, 7, torch.float64)
    zskt_fast.bn_statistics_prior([x], [rm], [rv], backend="cpu").backward()
    xd = x.detach()
    mean, var = xd.mean((0, 2, 3)), xd.var((0, 2, 3), unbiased=False)
    n = 3 * 5 * 2
    g_mean, g_var = (mean - rm) / (rm - mean).norm(), (var - rv) / (rv - var).norm()
    expected = g_mean.view(1, 4, 1, 1) / n + g_var.view(1, 4, 1, 1) * 2 * (xd - mean.view(1, 4, 1, 1)) / n
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-15)


def _interpreted(backend, device):
    """Triton's interpreter runs each program in Python: its tests take smaller maps."""
    return backend == "triton" and device == "cpu"


def test_gradcheck_float64(fused):
    backend, device = fused
    rm, rv = _running(3, 8, torch.float64)
    rm2, rv2 = _running(5, 9, torch.float64)
    small = _interpreted(backend, device)
    for layout in ("contiguous",) if small else ("contiguous", "channels_last", "strided"):
        a = make_input((2, 3, 2, 3) if small else (2, 3, 3, 5), torch.float64, device, layout=layout, seed=40)
        b = make_input((1, 5, 2, 1) if small else (3, 5, 2, 2), torch.float64, device, seed=41)
        assert torch.autograd.gradcheck(
            lambda p, q: zskt_fast.bn_statistics_prior([p, q], [rm.to(device), rm2.to(device)],
                                                       [rv.to(device), rv2.to(device)], backend=backend), (a, b))
        assert torch.autograd.gradcheck(lambda p: zskt_fast.bn_statistics(p, backend=backend), (a,))


def test_one_statistic_alone_has_a_gradient(fused):
    """A loss of the variance alone (or the mean alone) gets the gradient of that one."""
    backend, device = fused
    x = make_input((2, 3, 4, 4), torch.float64, device, seed=5)
    _, var = zskt_fast.bn_statistics(x, backend=backend)
    var.sum().backward()
    xr = as_reference(x)
    reference.bn_statistics(xr)[1].sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad)
    x.grad = None
    mean, _ = zskt_fast.bn_statistics(x, backend=backend)
    mean.sum().backward()
    torch.testing.assert_close(x.grad.cpu(), torch.full_like(xr, 1 / 32))


def test_deterministic_and_independent_of_thread_count(fused):
    backend, device = fused
    results = []
    threads = torch.get_num_threads()
    shape = (4, 20, 8, 8) if _interpreted(backend, device) else (16, 40, 16, 16)
    for layout in ("contiguous", "channels_last"):
        x = make_input(shape, torch.float32, device, layout=layout, seed=60)
        rm, rv = (t.to(device) for t in _running(shape[1], 61))
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            x.grad = None
            out = zskt_fast.bn_statistics_prior([x], [rm], [rv], backend=backend)
            out.backward()
            results.append((out.detach().clone(), x.grad.clone()))
        torch.set_num_threads(threads)
    for first, second in (results[0:2], results[2:4]):
        assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_opcheck(fused, layout, dtype):
    """Schema, fake kernel (shapes, dtypes and strides), autograd registration and AOT dispatch."""
    backend, device = fused
    skip_unsupported_dtype(backend, device, dtype)
    suffix = "_triton" if backend == "triton" else ""
    forward = getattr(torch.ops.zskt_fast, "bn_statistics_forward" + suffix)
    backward = getattr(torch.ops.zskt_fast, "bn_statistics_backward" + suffix)
    x = make_input((2, 3, 4, 5), dtype, device, layout=layout, seed=80)
    torch.library.opcheck(forward, (x,))
    mean, var = forward(x.detach())
    torch.library.opcheck(backward, (torch.randn_like(mean), torch.randn_like(var), x.detach(), mean))


def test_compiles_as_one_graph():
    """torch.compile of the prior traces the op (fullgraph) and gives the eager result."""
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    rm, rv = _running(6, 3)

    def prior(t):
        return zskt_fast.bn_statistics_prior([t, t * 2], [rm, rm], [rv, rv], backend="cpu")

    compiled = torch.compile(prior, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), prior(x))


@pytest.mark.parametrize("args, error, message", [
    (lambda x, m, v: (x, [m], [v]), TypeError, "inputs must be a list or tuple"),
    (lambda x, m, v: ([], [], []), ValueError, "inputs is empty"),
    (lambda x, m, v: ([x[0]], [m], [v]), ValueError, r"inputs\[0\] must be \[B, C, H, W\], got shape \(3, 5, 5\)"),
    (lambda x, m, v: ([x[:0]], [m], [v]), ValueError, r"inputs\[0\] is empty"),
    (lambda x, m, v: ([x.long()], [m], [v]), TypeError, r"inputs\[0\] must be float32"),
    (lambda x, m, v: ([x], [m[:2]], [v]), ValueError, r"running_means\[0\] must be \[3\] for inputs\[0\] of shape"),
    (lambda x, m, v: ([x], [m], []), ValueError, "running_vars has 0 tensors and inputs has 1"),
    (lambda x, m, v: ([x, x.to(torch.float64)[:, :2]], [m, m[:2]], [v, v[:2]]), None, None),
])
def test_bad_arguments_are_named(args, error, message):
    x = torch.randn(2, 3, 5, 5)
    m, v = _running(3, 1)
    if error is None:  # mixed dtypes over layers are fine
        assert zskt_fast.bn_statistics_prior(*args(x, m, v)).dtype == torch.float64
        return
    with pytest.raises(error, match=message):
        zskt_fast.bn_statistics_prior(*args(x, m, v))


def test_cuda_backend_name_runs_triton_and_bad_names_are_refused():
    from zskt_fast.ops.bn_statistics_prior import resolve_bn_backend
    assert resolve_bn_backend("eager", torch.device("cpu")) == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_bn_backend("fast", torch.device("cpu"))
