"""Bad input raises ValueError/TypeError naming the argument (and layer and shapes), before any kernel runs."""
import pytest
import torch

import zskt_fast

B, C = 4, 10


def logits(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


def feats(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


def good_features():
    return [feats(B, 3, 8, 8), feats(B, 5, 4, 4)], [feats(B, 6, 8, 8), feats(B, 7, 4, 4)]


BACKENDS = ["eager", "auto", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("student, teacher, error, match", [
    (logits(B, C, 1), logits(B, C), ValueError, r"student_logits must be \[B, C\].*\(4, 10, 1\)"),
    (logits(B, C), logits(B), ValueError, r"teacher_logits must be \[B, C\].*\(4,\)"),
    (logits(B, C), logits(B, C + 1), ValueError, r"differ in shape: \(4, 10\) vs \(4, 11\)"),
    (logits(B + 1, C), logits(B, C), ValueError, r"differ in shape"),
    (logits(0, C), logits(0, C), ValueError, r"student_logits is empty"),
    (logits(B, 0), logits(B, 0), ValueError, r"student_logits is empty"),
    (torch.randint(0, 3, (B, C)), logits(B, C), TypeError, r"student_logits must be float32.*int64"),
    (logits(B, C), torch.ones(B, C, dtype=torch.bool), TypeError, r"teacher_logits must be float32"),
    (logits(B, C).numpy(), logits(B, C), TypeError, r"student_logits must be a torch.Tensor, got ndarray"),
    (logits(B, C), logits(B, C, device="meta"), ValueError, r"different devices: cpu vs meta"),
])
def test_bad_logits(backend, student, teacher, error, match):
    for fn in (zskt_fast.kl_divergence, zskt_fast.zskt_generator_loss):
        with pytest.raises(error, match=match):
            fn(student, teacher, backend=backend)
    s_f, t_f = good_features()
    with pytest.raises(error, match=match):
        zskt_fast.zskt_student_loss(student, teacher, s_f, t_f, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make, error, match", [
    (lambda s, t: (s, t[:1]), ValueError, r"student_features has 2 feature maps and teacher_features has 1"),
    (lambda s, t: ([], []), ValueError, r"empty: give at least one pair"),
    (lambda s, t: (s[0], t[0]), TypeError, r"student_features must be a list or tuple.*got Tensor"),
    (lambda s, t: ([s[0], feats(B, 5, 16)], t), ValueError, r"student_features\[1\] must be \[B, C, H, W\].*rank 3"),
    (lambda s, t: (s, [t[0], feats(B + 1, 7, 4, 4)]), ValueError,
     r"layer 1: student_features \(4, 5, 4, 4\) and teacher_features \(5, 7, 4, 4\) must agree"),
    (lambda s, t: ([feats(B, 3, 8, 7), s[1]], t), ValueError, r"layer 0: .*\(4, 3, 8, 7\).*\(4, 6, 8, 8\)"),
    (lambda s, t: (s, [feats(B, 0, 8, 8), t[1]]), ValueError, r"teacher_features\[0\] is empty"),
    (lambda s, t: (s, [t[0], t[1].to(torch.int32)]), TypeError, r"teacher_features\[1\] must be float32.*int32"),
    (lambda s, t: (s, [t[0], t[1].to("meta")]), ValueError, r"teacher_features\[1\] is on meta"),
])
def test_bad_features(backend, make, error, match):
    s_f, t_f = make(*good_features())
    with pytest.raises(error, match=match):
        zskt_fast.attention_transfer(s_f, t_f, backend=backend)
    if match.startswith("empty"):
        return  # the student loss accepts no feature maps (it is then the KL alone)
    with pytest.raises(error, match=match):
        zskt_fast.zskt_student_loss(logits(B, C), logits(B, C), s_f, t_f, backend=backend)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, r"temperature must be a finite number > 0, got 0.0"),
    ({"temperature": -1}, r"temperature must be a finite number > 0"),
    ({"temperature": float("nan")}, r"temperature must be a finite number > 0"),
    ({"reduction": "avg"}, r"reduction must be one of mean, batchmean, sum, none; got 'avg'"),
    ({"backend": "fast"}, r"backend must be one of auto, eager, cpu, cuda, triton; got 'fast'"),
    ({"backend": "cuda"}, r"backend 'cuda' is not available: it runs on cuda tensors and the inputs are on cpu"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zskt_fast.kl_divergence(logits(B, C), logits(B, C), **kwargs)


@pytest.mark.parametrize("beta", [-1.0, float("inf"), "1"])
def test_bad_beta(beta):
    s_f, t_f = good_features()
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        zskt_fast.attention_transfer(s_f, t_f, beta=beta)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        zskt_fast.zskt_student_loss(logits(B, C), logits(B, C), s_f, t_f, beta=beta)


def test_logits_and_features_on_different_devices():
    s_f, t_f = good_features()
    with pytest.raises(ValueError, match="logits and feature maps: tensors are on different devices"):
        zskt_fast.zskt_student_loss(logits(B, C, device="meta"), logits(B, C, device="meta"), s_f, t_f)


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend 'triton' is not available"):
        zskt_fast.kl_divergence(logits(B, C), logits(B, C), backend="triton")


def test_compiled_kernel_checks_direct_calls():
    """The registered ops check their own arguments too, for callers that bypass the Python layer."""
    with pytest.raises(RuntimeError, match="differ in batch or spatial size"):
        torch.ops.zskt_fast.attention_transfer_forward(feats(2, 3, 4, 4), feats(2, 3, 4, 5))
    with pytest.raises(RuntimeError, match="logits must be"):
        torch.ops.zskt_fast.kl_divergence_forward(logits(2, 3, 4), logits(2, 3, 4), 1.0)


@pytest.mark.parametrize("make, match", [
    (lambda: zskt_fast.nn.KLDivergence(temperature=0), "temperature must be a finite number > 0"),
    (lambda: zskt_fast.nn.KLDivergence(reduction="avg"), "reduction must be one of"),
    (lambda: zskt_fast.nn.AttentionTransfer(beta=-1), "beta must be a finite number >= 0"),
    (lambda: zskt_fast.nn.ZSKTStudentLoss(backend="fast"), "backend must be one of"),
    (lambda: zskt_fast.nn.ZSKTGeneratorLoss(temperature=float("nan")), "temperature must be a finite number > 0"),
])
def test_nn_wrappers_check_their_options_when_built(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_and_features_of_different_batches(backend):
    s_f, t_f = good_features()  # batch 4
    with pytest.raises(ValueError, match="the logits hold 7 samples and the feature maps 4"):
        zskt_fast.zskt_student_loss(logits(7, C), logits(7, C), s_f, t_f, backend=backend)


def test_api_errors_name_arguments_not_command_line_options():
    from zskt_fast.engine.experiments.transition_curves import transition_curves
    from zskt_fast.models import build_classifier

    net = build_classifier("wrn-10-1", num_classes=5, in_channels=1).eval()
    with pytest.raises(ValueError) as error:
        transition_curves(net, net, torch.randn(3, 1, 8, 8), n_images=4, steps=1, progress=False)
    assert "--" not in str(error.value)
