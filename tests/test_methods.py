"""The data-free methods beside ZSKT (DFAD, DAFL, DFQ) in Algorithm 1's loop: each loss term against its formula,
the presets and their overrides, the generator objective through the teacher's hooks against a hand computation,
the prior's moving averages, bad input refused before any work, resume, compile and bf16 with every method."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zskt_fast
from zskt_fast import train as train_cli
from zskt_fast.engine.settings.config import TrainConfig
from zskt_fast.engine.methods.objectives import GeneratorObjective, batch_norm_layers
from zskt_fast.engine.methods.registry import METHODS
from zskt_fast.engine.settings.zero_shot import ObjectiveSettings, StepSettings
from zskt_fast.engine.trainer import train
from zskt_fast.ops import data_free_losses as terms

from conftest import Killed, algorithm_one, kill_after


def _logits(seed, shape=(6, 5)):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()


# -- each term against its formula --------------------------------------------------------------------------------

def test_each_term_is_its_formula_in_float64():
    s, t = _logits(1), _logits(2)
    torch.testing.assert_close(terms.adversarial_l1(s, t), -(t - s).abs().mean())
    torch.testing.assert_close(terms.logit_l1(s, t), (t - s).abs().mean())
    p = F.softmax(t, 1)
    torch.testing.assert_close(terms.one_hot_loss(t),
                               -(F.log_softmax(t, 1).gather(1, t.argmax(1, keepdim=True))).mean())
    mean_p = p.mean(0)
    torch.testing.assert_close(terms.class_balance_loss(t), (mean_p * mean_p.log()).sum())
    f = _logits(3, (6, 7))
    torch.testing.assert_close(terms.activation_loss(f), -f.abs().mean())
    for temperature in (1.0, 4.0, 20.0):
        log_ps, log_pt = F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)
        kl_rows = (log_pt.exp() * (log_pt - log_ps)).sum(1)
        for backend in ("eager", "cpu"):
            torch.testing.assert_close(terms.kd_loss(s, t, temperature=temperature, backend=backend),
                                       temperature ** 2 * kl_rows.mean())
            torch.testing.assert_close(zskt_fast.zskt_generator_loss(s, t, temperature=temperature,
                                                                     reduction="batchmean", backend=backend),
                                       -kl_rows.mean())
            torch.testing.assert_close(zskt_fast.zskt_generator_loss(s, t, temperature=temperature, reduction="mean",
                                                                     backend=backend), -kl_rows.sum() / s.numel())


def test_the_terms_have_the_gradients_of_their_formulas():
    for term in (lambda s, t: terms.adversarial_l1(s, t), lambda s, t: terms.one_hot_loss(t),
                 lambda s, t: terms.class_balance_loss(t), lambda s, t: terms.kd_loss(s, t, temperature=3.0),
                 lambda s, t: zskt_fast.zskt_generator_loss(s, t, temperature=2.0, reduction="batchmean")):
        assert torch.autograd.gradcheck(term, (_logits(4), _logits(5)))


def test_terms_refuse_bad_logits():
    with pytest.raises(ValueError, match="must be \\[B, C\\] logits"):
        terms.one_hot_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="differ in shape"):
        terms.adversarial_l1(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        terms.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)


# -- presets and settings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_a_preset_fills_every_weight_and_n_s_and_options_override_it(method):
    preset = METHODS[method]
    config = TrainConfig.from_flat({"method": method}).resolved()
    o = config.objectives
    assert (o.adversarial, o.adversarial_loss, o.bn_prior, o.one_hot, o.balance, o.activation, o.student_loss) == (
        preset.adversarial, preset.adversarial_loss, preset.bn_prior, preset.one_hot, preset.balance,
        preset.activation, preset.student_loss)
    assert config.loop.n_student_steps == METHODS[method].default("n_student_steps", "digits")
    changed = TrainConfig.from_flat({"method": method, "bn_prior": 10.0, "n_student_steps": 3}).resolved()
    assert changed.objectives.bn_prior == 10.0 and changed.loop.n_student_steps == 3
    assert changed.objectives.one_hot == preset.one_hot


# The published scripts' values (Fast-Datafree at c188487, zju-vipa/CMI at its HEAD unless a commit is named):
# (method, preset field, published value, script and the line that sets it).
PUBLISHED = [
    ("dfad", "adversarial", 1.0, "CMI scripts/dfad_cifar10.sh (3f791f9): --adv 1"),
    ("dfad", "n_student_steps", 5, "CMI scripts/dfad_cifar10.sh (3f791f9): --kd_steps 5"),
    ("dafl", "adversarial", 0.0, "Fast-Datafree scripts/dafl_cifar.sh: --adv 0"),
    ("dafl", "one_hot", 1.0, "Fast-Datafree scripts/dafl_cifar.sh: --oh 1"),
    ("dafl", "activation", 0.001, "Fast-Datafree scripts/dafl_cifar.sh and CMI scripts/dafl/"
                                  "dafl_cifar10_wrn402_wrn161.sh: --act 0.001"),
    ("dafl", "balance", 20.0, "Fast-Datafree scripts/dafl_cifar.sh: --balance 20"),
    ("dafl", "bn_prior", 0.0, "Fast-Datafree scripts/dafl_cifar.sh: --bn 0"),
    ("dafl", "n_student_steps", 5, "Fast-Datafree scripts/dafl_cifar.sh: --kd_steps 5"),
    ("dfq", "adversarial", 1.0, "CMI scripts/dfq/dfq_cifar10_wrn402_wrn161.sh: --adv 1"),
    ("dfq", "bn_prior", 1.0, "CMI scripts/dfq/dfq_cifar10_wrn402_wrn161.sh: --bn 1"),
    ("dfq", "one_hot", 1.0, "CMI scripts/dfq/dfq_cifar10_wrn402_wrn161.sh: --oh 1"),
    ("dfq", "balance", 20.0, "CMI scripts/dfq/dfq_cifar10_wrn402_wrn161.sh: --balance 20"),
    ("dfq", "n_student_steps", 10, "CMI scripts/dfq/dfq_cifar10_wrn402_wrn161.sh: --kd_steps 10"),
    ("fast", "adversarial", 1.1, "Fast-Datafree scripts/fast_cifar.sh: --adv 1.1"),
    ("fast", "bn_prior", 10.0, "Fast-Datafree scripts/fast_cifar.sh: --bn 10"),
    ("fast", "bn_momentum", 0.9, "Fast-Datafree scripts/fast_cifar.sh: --bn_mmt 0.9"),
    ("fast", "one_hot", 0.4, "Fast-Datafree scripts/fast_cifar.sh: --oh 0.4"),
    ("fast", "n_student_steps", 400, "Fast-Datafree scripts/fast_cifar.sh: --kd_steps 400"),
    ("fast", "batch_size", 256, "Fast-Datafree scripts/fast_cifar.sh: --batch_size 256 (the synthesis batch too)"),
    ("fast", "temperature", 20.0, "Fast-Datafree scripts/fast_cifar.sh: --T 20"),
    ("deepinversion", "adversarial", 1.0, "Fast-Datafree scripts/deepinv_cifar.sh: --adv 1"),
    ("deepinversion", "bn_prior", 10.0, "Fast-Datafree scripts/deepinv_cifar.sh: --bn 10"),
    ("deepinversion", "one_hot", 1.0, "Fast-Datafree scripts/deepinv_cifar.sh: --oh 1"),
    ("deepinversion", "n_generator_steps", 1000, "Fast-Datafree scripts/deepinv_cifar.sh: --g_steps 1000"),
    ("deepinversion", "tv", 2.5e-5, "NVlabs DeepInversion cifar10/deepinversion_cifar10.py: --di_var_scale 2.5e-5"),
    ("deepinversion", "image_l2", 0.0, "NVlabs DeepInversion cifar10/deepinversion_cifar10.py: --di_l2_scale 0.0"),
    *[("nayer", field, value, f"NAYER scripts/nayer_100.sh (CIFAR-10 lines): {flag}") for field, value, flag in (
        ("adversarial", 1.33, "--adv 1.33"), ("bn_prior", 10.0, "--bn 10.0"), ("one_hot", 0.5, "--oh 0.5"),
        ("n_generator_steps", 30, "--g_steps 30"), ("batch_size", 512, "--batch_size 512"),
        ("synthesis_batch", 400, "--synthesis_batch_size 400"), ("synthesis_lr", 4e-3, "--lr_g 4e-3"),
        ("kd_lr", 0.2, "--lr 0.2"), ("warmup", 20, "--warmup 20"), ("iterations", 120, "--epochs 120"),
        ("loops", 2, "--g_loops 2"), ("warmup_loops", 10, "--gwp_loops 10"), ("generator_life", 10, "--g_life 10"))],
    ("nayer", "noisy_width", 1000, "NAYER datafree/models/generator.py NLGenerator: le_emb_size 1000 as built"),
    *[("cmi", field, value, f"CMI scripts/cmi_cifar10.sh (3f791f9): {flag}") for field, value, flag in (
        ("adversarial", 0.5, "--adv 0.5"), ("bn_prior", 1.0, "--bn 1.0"), ("one_hot", 1.0, "--oh 1.0"),
        ("contrastive", 0.8, "--cr 0.8"), ("contrastive_temperature", 0.2, "--cr_T 0.2"),
        ("n_generator_steps", 200, "--g_steps 200"), ("synthesis_lr", 1e-3, "--lr_g 1e-3"),
        ("n_student_steps", 400, "--kd_steps 400"), ("batch_size", 256, "--batch_size 256"),
        ("kd_lr", 0.1, "--lr 0.1"), ("temperature", 20.0, "--T 20"))],
    *[("cmi", field, value, f"CMI datafree_kd.py (3f791f9): {flag}") for field, value, flag in (
        ("iterations", 200, "--epochs default 200"), ("kd_milestones", (0.6, 0.75, 0.9),
                                                     "--lr_decay_milestones 120,150,180 of 200"),
        ("head_dim", 256, "CMISynthesizer(head_dim=256)"), ("bank_size", 40960, "bank_size=40960"),
        ("negatives", 4096, "n_neg=4096"))],
]


@pytest.mark.parametrize("method, field, value, source", PUBLISHED, ids=[f"{m}-{f}" for m, f, _, _ in PUBLISHED])
def test_each_preset_value_is_the_published_scripts(method, field, value, source):
    preset = METHODS[method]  # a value of the published (CIFAR) rounds where the method has none of its own
    owner = preset if hasattr(preset, field) else preset.rounds_on("cifar10")
    assert getattr(owner, field) == value, source


def test_the_published_settings_of_each_method():
    """The numbers docs/methods.md cites: ZSKT the paper's; DFAD, DAFL and DFQ their published code's."""
    assert METHODS["zskt"].n_student_steps == 10 and METHODS["zskt"].student_loss == "kl-at"
    assert (METHODS["dfad"].adversarial_loss, METHODS["dfad"].student_loss) == ("l1", "l1")
    assert METHODS["dfq"].adversarial_loss == "kl-batch"


@pytest.mark.parametrize("values, message", [
    ({"method": "mad"}, "method must be one of zskt, dfad, dafl, dfq, fast, deepinversion, nayer, cmi; got 'mad'"),
    ({"bn_prior": -1.0}, "bn_prior must be a finite number >= 0, got -1.0"),
    ({"balance": float("nan")}, "balance must be a finite number >= 0, got nan"),
    ({"bn_momentum": 1.0}, "bn_momentum must be in \\[0, 1\\), got 1.0"),
    ({"adversarial": 0.0}, "every weight of the generator's objective is 0"),
    ({"student_loss": "mse"}, "student_loss must be one of kl-at, kd, l1; got 'mse'"),
])
def test_bad_settings_are_one_line_errors_before_any_work(values, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message):
        ObjectiveSettings(**values).resolved()
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and not (tmp_path / "out").exists()


def test_the_help_names_each_method_and_its_paper(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for title in ("ZSKT, Micaelli & Storkey 2019", "DFAD, Fang et al. 2019", "DAFL, Chen et al. 2019",
                  "DFQ, Choi et al. 2020", "NAYER, Tran et al. 2024", "CMI, Fang et al. 2021"):
        assert title in help_text
    assert "--bn-prior" in help_text and "--method {zskt,dfad,dafl,dfq,fast,deepinversion,nayer,cmi}" in help_text
    for option in ("--label-embedding", "--loops", "--generator-life", "--contrastive", "--kd-milestones"):
        assert option in help_text


# -- the generator objective on a real teacher --------------------------------------------------------------------

class _Tiny(nn.Module):
    """A teacher with two BatchNorm2d layers and a classifier, returning (logits, features) as this package's do."""

    def __init__(self, norms=True):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.bn1, self.bn2 = (nn.BatchNorm2d(4), nn.BatchNorm2d(6)) if norms else (nn.Identity(), nn.Identity())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h1 = torch.relu(self.bn1(self.conv1(x)))
        h2 = torch.relu(self.bn2(self.conv2(h1)))
        return self.fc(h2.mean((2, 3))), [h2]


def _trained_tiny(dtype=torch.float64):
    torch.manual_seed(0)
    net = _Tiny().to(dtype)
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8, dtype=dtype) * 2 + 1)  # running statistics that are not the defaults
    return net.eval()


def test_the_dfq_objective_is_the_weighted_sum_of_its_terms(float64_default):
    teacher, student = _trained_tiny(), _Tiny().eval()
    objectives = ObjectiveSettings(method="dfq", activation=0.5).resolved()
    objective = GeneratorObjective(objectives, StepSettings(backend="cpu").resolved(
        zskt_fast.engine.settings.parts.Context()), teacher, torch.device("cpu"))
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    s_logits = student(x)[0]
    objective.start_collecting()
    t_logits, _ = teacher(x)
    bn_inputs, fc_inputs = objective.stop_collecting()
    loss = objective.loss(s_logits, t_logits, bn_inputs, fc_inputs)
    # by hand: the BatchNorm inputs recomputed, the prior's formula, and each term
    h1_in = teacher.conv1(x)
    h2_in = teacher.conv2(torch.relu(teacher.bn1(h1_in)))
    prior = sum(torch.linalg.vector_norm(bn.running_var - h.var((0, 2, 3), unbiased=False)) +
                torch.linalg.vector_norm(bn.running_mean - h.mean((0, 2, 3)))
                for bn, h in ((teacher.bn1, h1_in), (teacher.bn2, h2_in)))
    features = torch.relu(teacher.bn2(h2_in)).mean((2, 3))
    log_ps, log_pt = F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1)
    kl_batch = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
    mean_p = log_pt.exp().mean(0)
    expected = (-kl_batch + prior + F.cross_entropy(t_logits, t_logits.argmax(1)) + 20 * (mean_p * mean_p.log()).sum()
                + 0.5 * -features.abs().mean())
    torch.testing.assert_close(loss, expected)
    grad, = torch.autograd.grad(loss, x, retain_graph=True)
    grad_expected, = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, grad_expected)
    assert len(bn_inputs) == 2 and len(fc_inputs) == 1


def test_the_prior_momentum_blends_with_the_moving_average(float64_default):
    teacher = _trained_tiny()
    objectives = ObjectiveSettings(method="dfq", bn_momentum=0.9).resolved()
    objective = GeneratorObjective(objectives, StepSettings(backend="cpu").resolved(
        zskt_fast.engine.settings.parts.Context()), teacher, torch.device("cpu"))
    norms = batch_norm_layers(teacher)
    batches = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    averages = None
    for x in batches:
        objective.start_collecting()
        teacher(x)
        inputs, _ = objective.stop_collecting()
        stats = [(h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)) for h in inputs]
        prior = objective._bn_prior(inputs)
        used = stats if averages is None else [((1 - 0.9) * m + 0.9 * a[0], (1 - 0.9) * v + 0.9 * a[1])
                                               for (m, v), a in zip(stats, averages)]
        expected = sum(torch.linalg.vector_norm(n.running_var - v) + torch.linalg.vector_norm(n.running_mean - m)
                       for n, (m, v) in zip(norms, used))
        torch.testing.assert_close(prior, expected)
        averages = [torch.stack([m, v]).detach() if averages is None else 0.9 * a + 0.1 * torch.stack([m, v]).detach()
                    for (m, v), a in zip(stats, averages or [None] * len(stats))]
        for kept, mine in zip(objective.averages, averages):
            torch.testing.assert_close(kept, mine)


def test_a_term_that_needs_what_the_teacher_lacks_is_refused_before_any_folder(tmp_path):
    teacher, student = _Tiny(norms=False), _Tiny()
    for settings, words in (({"method": "dfq"}, "reads the statistics of the teacher's BatchNorm2d layers"),
                            ({"method": "zskt", "bn_prior": 1.0}, "and the teacher has none: use another method or "
                                                                  "--bn-prior 0")):
        with pytest.raises(ValueError, match=words):
            zskt_fast.distill(teacher, student, image_shape=(1, 8, 8), iterations=1, batch_size=4, beta=0,
                              out=tmp_path / "run", progress=False, **settings)
        assert not (tmp_path / "run").exists()
    no_linear = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="reads the input of the teacher's last linear layer"):
        zskt_fast.distill(no_linear, nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                          image_shape=(1, 8, 8), iterations=1, batch_size=4, beta=0, method="dafl", progress=False)


# -- whole runs ---------------------------------------------------------------------------------------------------

def _config(**overrides):
    values = dict(iterations=6, batch_size=16, eval_every=3, log_every=3, checkpoint_every=2, tensorboard=False,
                  compile="off", amp="off")
    return TrainConfig.from_flat({**values, **overrides})


def _records(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds_per_iteration"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["dfad", "dafl", "dfq"])
def test_each_method_trains_and_records_its_settings(method, tmp_path, teacher_cache):
    summary = train(_config(method=method), tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert summary["method"] == method and config["method"] == method
    assert config["n_student_steps"] == METHODS[method].n_student_steps
    assert config["bn_prior"] == METHODS[method].bn_prior
    records = _records(tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(r["loss_generator"])) for r in records)
    assert [h["iteration"] for h in summary["history"]] == [3, 6] and summary["history"][-1]["seconds"] > 0


def test_a_dfq_run_with_averaged_statistics_resumes_bit_for_bit(tmp_path, teacher_cache):
    config = dict(method="dfq", bn_momentum=0.9)
    train(_config(**config), tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train(_config(**config), tmp_path / "killed", progress=False, callbacks=[kill_after(5)])
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4 and state["steps"]["objective"]["averaged"] == 1
    train(None, tmp_path / "killed", resume=True, progress=False)
    assert _records(tmp_path / "whole") == _records(tmp_path / "killed")
    for name in ("student.pt", "generator.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "killed" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_refuses_a_changed_method(tmp_path, teacher_cache, capsys):
    with pytest.raises(Killed):
        train(_config(method="dfad"), tmp_path / "run", progress=False, callbacks=[kill_after(3)])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["method"] = "dfq"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--resume", str(tmp_path / "run"), "--no-progress"])
    assert exit_info.value.code == 2 and "differ in method" in capsys.readouterr().err


def test_the_dfq_generator_loss_traces_as_one_graph_with_its_hooks(float64_default):
    """torch.compile (fullgraph: no break) of the generator's loss, whose teacher hooks collect the BatchNorm
    inputs, gives the eager loss and gradient."""
    from zskt_fast.engine.settings.parts import Context
    from zskt_fast.models import Generator
    teacher, student, generator = _trained_tiny(), _Tiny(), Generator(8, 8, 1).double()
    steps = algorithm_one(teacher, student, generator, StepSettings(compile="off", amp="off", backend="cpu", beta=0),
                          objectives=ObjectiveSettings(method="dfq", activation=0.1))
    z = torch.randn(4, 8)
    compiled = torch.compile(steps.generator_loss, fullgraph=True, backend="aot_eager")
    eager_loss = steps.generator_loss(z)
    eager_grads = torch.autograd.grad(eager_loss, list(generator.parameters()))
    compiled_loss = compiled(z)
    compiled_grads = torch.autograd.grad(compiled_loss, list(generator.parameters()))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_dfq_trains_in_mixed_precision(amp, tmp_path, teacher_cache):
    """bf16 autocast, and fp16 with its loss scalers, with the prior's hooks reading half-precision maps."""
    summary = train(_config(method="dfq", amp=amp, iterations=2, eval_every=2, log_every=1), tmp_path / amp,
                    progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss_generator"])) for r in _records(tmp_path / amp))
    assert summary["amp"] == amp


def test_a_torchvision_teacher_gives_the_prior_every_batch_norm_layer(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    teacher = torchvision.models.resnet18(num_classes=4).eval()
    student = torchvision.models.mobilenet_v3_small(num_classes=4)
    seen = []
    real = GeneratorObjective._bn_prior

    def counting(self, inputs):
        seen.append(len(inputs))
        return real(self, inputs)

    GeneratorObjective._bn_prior = counting
    try:
        result = zskt_fast.distill(teacher, student, image_shape=(3, 32, 32), iterations=1, batch_size=4,
                                   method="dfq", n_student_steps=1, progress=False)
    finally:
        GeneratorObjective._bn_prior = real
    assert seen == [len(batch_norm_layers(teacher))] == [20]
    assert result.summary["method"] == "dfq"


def test_the_hooks_leave_the_callers_teacher_when_the_run_ends():
    teacher, student = _trained_tiny(torch.float32), _Tiny()
    zskt_fast.distill(teacher, student, image_shape=(1, 8, 8), iterations=1, batch_size=4, beta=0, method="dfq",
                      activation=0.1, n_student_steps=1, progress=False)
    assert all(not m._forward_pre_hooks for m in teacher.modules())
