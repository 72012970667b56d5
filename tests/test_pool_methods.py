"""The synthesis-and-pool methods (fast: FastDFKD's meta-learned generator; deepinversion: optimised images): their
loss terms against their formulas, the first-order MAML step against a hand computation, the pool, the settings, and
whole runs (resume bit for bit, mixed precision, refusals before any folder)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zskt_fast
from zskt_fast import train as train_cli
from zskt_fast.engine.settings.config import TrainConfig
from zskt_fast.engine.methods.objectives import GeneratorObjective
from zskt_fast.engine.loops.pool import ImagePool, augment, pixels_to_bytes
from zskt_fast.engine.methods.registry import METHODS
from zskt_fast.engine.settings.rounds import PoolSettings
from zskt_fast.engine.settings.zero_shot import ObjectiveSettings, StepSettings
from zskt_fast.engine.methods.synthesis import ImageSynthesis, MetaGeneratorSynthesis
from zskt_fast.engine.trainer import train
from zskt_fast.models import Generator
from zskt_fast.ops import data_free_losses as terms
from zskt_fast.ops.reference import prior_of_statistics

from conftest import Killed, kill_after, pool_objective_by_hand


def _logits(seed, shape=(7, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * 2


# -- the terms ----------------------------------------------------------------------------------------------------

def test_the_decision_adversarial_kl_is_its_formula():
    s, t = _logits(0), _logits(1)
    s[:3] = t[:3] + 0.1 * _logits(2)[:3]  # a few samples on which the argmaxes surely agree
    total = 0.0
    for i in range(s.shape[0]):
        p, q = t[i].softmax(0), s[i].softmax(0)
        kl = float((p * (p.log() - q.log())).sum())
        total += kl if int(s[i].argmax()) == int(t[i].argmax()) else 0.0
    expected = -total / s.shape[0]
    assert terms.decision_adversarial_kl(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert sum(int(s[i].argmax()) == int(t[i].argmax()) for i in range(7)) not in (0, 7)  # the mask matters here


def test_the_competition_term_is_minus_the_jensen_shannon_divergence():
    s, t = _logits(3), _logits(4)
    p, q = (t / 3).softmax(1), (s / 3).softmax(1)
    m = (p + q) / 2
    js = 0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)
    torch.testing.assert_close(terms.competition_loss(s, t), -js.mean(), rtol=1e-12, atol=1e-14)
    assert terms.competition_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)


def test_the_cross_entropy_to_random_targets_and_the_image_priors_are_their_formulas():
    t = _logits(5)
    targets = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    expected = -sum(float(t[i].log_softmax(0)[targets[i]]) for i in range(7)) / 7
    assert terms.cross_entropy_to(t, targets).item() == pytest.approx(expected, rel=1e-12)
    x = torch.randn(3, 2, 5, 7, dtype=torch.float64)  # H, W odd and different
    tv = 0.0
    for dy, dx in ((0, 1), (1, 0), (1, -1), (1, 1)):
        squares = 0.0
        for b in range(3):
            for c in range(2):
                for i in range(5 - dy):
                    for j in range(max(0, -dx), 7 - max(0, dx)):
                        squares += float(x[b, c, i, j] - x[b, c, i + dy, j + dx]) ** 2
        tv += math.sqrt(squares)
    assert terms.total_variation(x).item() == pytest.approx(tv, rel=1e-12)
    assert terms.image_l2(x).item() == pytest.approx(math.sqrt(float((x ** 2).sum())), rel=1e-12)


def test_the_new_terms_have_the_gradients_of_their_formulas():
    s, t = _logits(6).requires_grad_(), _logits(7).requires_grad_()
    assert torch.autograd.gradcheck(terms.competition_loss, (s, t))
    assert torch.autograd.gradcheck(lambda a: terms.decision_adversarial_kl(a, t.detach()), (s,))
    x = torch.randn(2, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(terms.total_variation, (x,))
    assert torch.autograd.gradcheck(terms.image_l2, (x,))


def test_the_new_terms_refuse_bad_input():
    with pytest.raises(ValueError, match="targets must be \\[B\\] with B = 7"):
        terms.cross_entropy_to(_logits(0), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2x2 pixels"):
        terms.total_variation(torch.zeros(2, 1, 1, 4))
    with pytest.raises(ValueError, match="non-empty \\[B, C, H, W\\]"):
        terms.image_l2(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        terms.competition_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# -- the pool and its augmentation --------------------------------------------------------------------------------

def test_the_pool_keeps_8_bit_pixels_drops_the_oldest_and_draws_without_replacement():
    pool = ImagePool(10, (1, 2, 2), batch_size=4, device=torch.device("cpu"), seed=0)
    batches = [torch.full((4, 1, 2, 2), (k + 1) / 10) for k in range(3)]
    for batch in batches:
        pool.add(batch)
    assert pool.count == 10 and pool.nbytes == 40
    levels = sorted({int(v) for v in pool.images.flatten()})
    assert levels == [int(pixels_to_bytes(torch.tensor(v / 10)).item()) for v in (1, 2, 3)]
    assert int((pool.images == pixels_to_bytes(torch.tensor(0.1))).all(dim=(1, 2, 3)).sum()) == 2  # 2 of 4 left
    drawn = torch.cat([pool.sample(), pool.sample()])
    assert drawn.shape == (8, 1, 2, 2) and len({float(v) for v in drawn[:, 0, 0, 0]}) <= 3
    newest = pool.newest(4)
    assert torch.equal(newest, pixels_to_bytes(batches[2]).float() / 255)
    with pytest.raises(ValueError, match="cannot give batches of 12"):
        ImagePool(10, (1, 2, 2), batch_size=12, device=torch.device("cpu"), seed=0)


def test_the_pool_state_round_trip_draws_the_same_batches():
    a = ImagePool(16, (3, 4, 4), batch_size=4, device=torch.device("cpu"), seed=3)
    a.add(torch.rand(8, 3, 4, 4))
    state = a.state_dict()
    b = ImagePool(16, (3, 4, 4), batch_size=4, device=torch.device("cpu"), seed=99)
    b.load_state_dict(state)
    for _ in range(3):
        assert torch.equal(a.sample(), b.sample())
    with pytest.raises(ValueError, match="the checkpoint's pool holds 16 images"):
        ImagePool(32, (3, 4, 4), batch_size=4, device=torch.device("cpu"), seed=0).load_state_dict(state)


@pytest.mark.parametrize("kind, pad", [("crop+flip", 4), ("crop", 4), ("shift", 1)])
def test_augmentation_takes_shifted_windows_of_the_zero_padded_images(kind, pad):
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float64).view(2, 3, 6, 6) + 1
    out = augment(x, kind, torch.Generator().manual_seed(0))
    padded = F.pad(x, (pad,) * 4)
    for b in range(2):
        windows = [padded[b, :, i:i + 6, j:j + 6] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
        windows += [w.flip(-1) for w in windows] if kind == "crop+flip" else []
        assert any(torch.equal(out[b], w) for w in windows)
    assert augment(x, "none", torch.Generator()) is x
    share = augment(x[1:], kind, torch.Generator().manual_seed(0), share=slice(1, 2), total=2)
    assert torch.equal(share, out[1:])  # a rank's share takes the global batch's draws
    x.requires_grad_()
    assert augment(x, kind, torch.Generator().manual_seed(1)).sum().grad_fn is not None


# -- the first-order MAML step ------------------------------------------------------------------------------------

class _Tiny(nn.Module):
    def __init__(self, channels=1, classes=3):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3))), []


def _teacher():
    torch.manual_seed(1)
    net = _Tiny()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 1, 4, 4) * 2)
    return net.eval().requires_grad_(False)


def test_the_meta_generator_takes_the_first_order_maml_step(float64_default):
    """Two steps of the copy (Adam on the copy and z), then the meta generator's Adam step of learning rate 2 * lr
    along the sum of the copy's two gradients, computed here by hand from the formulas."""
    teacher, student = _teacher(), _Tiny()
    torch.manual_seed(2)
    generator = Generator(3, 4, 1, output="sigmoid")
    objectives = ObjectiveSettings(method="fast", bn_momentum=0.0).resolved()
    steps = StepSettings(batch_size=5, amp="off", compile="off", backend="eager")
    pool = PoolSettings(synthesis_lr=0.05, z_lr=0.1, reset_round=0, warmup=0)
    objective = GeneratorObjective(objectives, steps, teacher, torch.device("cpu"), average_per_round=True)
    before = [p.detach().clone() for p in generator.parameters()]
    synthesis = MetaGeneratorSynthesis(generator, teacher, student, objective, steps, pool, image_shape=(1, 4, 4),
                                       num_classes=3, n_steps=2, normalisation=((0.0,), (1.0,)),
                                       augmentation="none", device=torch.device("cpu"), world=None, seed=7)
    student.eval()
    images, loss = synthesis.synthesise(0, adversarial=True)

    draws = torch.Generator().manual_seed(7)
    z = torch.randn(5, 3, generator=draws).requires_grad_()
    targets = torch.randint(0, 3, (5,), generator=draws)
    copy = Generator(3, 4, 1, output="sigmoid")
    with torch.no_grad():
        for p, b in zip(copy.parameters(), before):
            p.copy_(b)
    inner = torch.optim.Adam([{"params": list(copy.parameters())}, {"params": [z], "lr": 0.1}], lr=0.05,
                             betas=(0.5, 0.999))
    summed = [torch.zeros_like(b) for b in before]
    losses, batches = [], []
    for _ in range(2):
        x = copy(z)
        total = pool_objective_by_hand(teacher, student, x, targets, bn=10.0, one_hot=0.4, adversarial=1.1)
        losses.append(float(total.detach()))
        batches.append(x.detach().clone())
        inner.zero_grad()
        total.backward()
        for acc, p in zip(summed, copy.parameters()):
            acc += p.grad
        inner.step()
    eps, lr = 1e-8, 2 * 0.05
    for after, b, g in zip(generator.parameters(), before, summed):
        # Adam's first step: m = (1 - 0.5) g, v = (1 - 0.999) g^2, bias-corrected back to g and g^2
        expected = b - lr * g / (g.abs() + eps)
        # atol: the convolution biases before BatchNorm have a zero gradient up to rounding (~1e-18), which eps turns
        # into steps of lr * 1e-10 whose sign is the rounding's
        torch.testing.assert_close(after.detach(), expected, rtol=1e-9, atol=1e-8)
    lowest = min(range(2), key=lambda k: losses[k])
    assert float(loss) == pytest.approx(losses[lowest], rel=1e-12)
    torch.testing.assert_close(images, batches[lowest])
    assert any(not torch.equal(a, b) for a, b in zip(generator.parameters(), before))


def test_the_first_layer_is_reinitialised_at_the_reset_round(float64_default):
    teacher, student = _teacher(), _Tiny()
    generator = Generator(3, 4, 1, output="sigmoid")
    objectives = ObjectiveSettings(method="fast").resolved()
    steps = StepSettings(batch_size=4, amp="off", compile="off", backend="eager")
    objective = GeneratorObjective(objectives, steps, teacher, torch.device("cpu"), average_per_round=True)
    synthesis = MetaGeneratorSynthesis(generator, teacher, student, objective, steps,
                                       PoolSettings(synthesis_lr=1e-3, z_lr=0.01, reset_round=2, warmup=0),
                                       image_shape=(1, 4, 4), num_classes=3, n_steps=1,
                                       normalisation=((0.0,), (1.0,)), augmentation="none",
                                       device=torch.device("cpu"), world=None, seed=0)
    synthesis.synthesise(0, adversarial=False)
    assert float(generator.project.weight.detach().std()) > 0.05  # PyTorch's default init: uniform of bound 1/sqrt(3)
    synthesis.synthesise(1, adversarial=False)
    # One meta step after N(0, 0.02): still small, and the bias stepped from 0 by at most the learning rate
    assert float(generator.project.weight.detach().std()) < 0.03
    assert float(generator.project.bias.detach().abs().max()) <= 2e-3


def test_the_reset_draws_the_first_linear_layer_and_the_first_batch_norm(float64_default):
    """FastDFKD's reset_l0 at its HEAD (c188487, datafree/synthesis/fast_meta.py): modules "l1.0" (the linear layer)
    and "conv_blocks.0" (the first BatchNorm2d), each nn.init.normal_(weight, 0.0, 0.02) and bias 0, in module
    order; nothing else changes."""
    teacher, student = _teacher(), _Tiny()
    generator = Generator(3, 4, 1, output="sigmoid")
    objective = GeneratorObjective(ObjectiveSettings(method="fast").resolved(), StepSettings(backend="eager"), teacher,
                                   torch.device("cpu"), average_per_round=True)
    synthesis = MetaGeneratorSynthesis(generator, teacher, student, objective, StepSettings(batch_size=4),
                                       PoolSettings(synthesis_lr=1e-3, z_lr=0.01, reset_round=2, warmup=0),
                                       image_shape=(1, 4, 4), num_classes=3, n_steps=1,
                                       normalisation=((0.0,), (1.0,)), augmentation="none",
                                       device=torch.device("cpu"), world=None, seed=5)
    with torch.no_grad():  # biases away from 0, so that their reset shows
        generator.project.bias.fill_(0.3)
        generator.body[0].bias.fill_(0.3)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    synthesis.reset_first_layer()
    draws = torch.Generator().manual_seed(5)
    linear = torch.randn(generator.project.weight.shape, generator=draws) * 0.02
    norm = torch.randn(128, generator=draws) * 0.02
    after = generator.state_dict()
    torch.testing.assert_close(after["project.weight"], linear, rtol=0, atol=0)
    torch.testing.assert_close(after["body.0.weight"], norm, rtol=0, atol=0)
    assert not after["project.bias"].any() and not after["body.0.bias"].any()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"project.weight", "project.bias", "body.0.weight", "body.0.bias"}


def _deepinversion(seed=3, n_steps=3, **objective):
    teacher, student = _teacher(), _Tiny()
    objectives = ObjectiveSettings(method="deepinversion", **objective).resolved()
    steps = StepSettings(batch_size=4, amp="off", compile="off", backend="eager")
    objective = GeneratorObjective(objectives, steps, teacher, torch.device("cpu"), average_per_round=True)
    return ImageSynthesis(None, teacher, student.eval(), objective, steps,
                          PoolSettings(synthesis_lr=0.1, z_lr=0.0, reset_round=0, warmup=0),
                          image_shape=(1, 8, 8), num_classes=3, n_steps=n_steps, normalisation=((0.5,), (0.25,)),
                          augmentation="crop+flip", device=torch.device("cpu"), world=None, seed=seed)


def test_deepinversion_takes_the_image_priors_of_the_jittered_batch(float64_default):
    """NVlabs' deepinversion_cifar10.py computes TV (and the L2 prior) of inputs_jit: the images as the networks see
    them, shifted and flipped, not of the optimised batch itself."""
    synthesis = _deepinversion(n_steps=1, tv=1.0, image_l2=1.0)
    seen = {}
    loss = synthesis.loss

    def recording(inputs, targets, images, adversarial):
        seen.update(inputs=inputs.detach().clone(), images=images.detach().clone())
        return loss(inputs, targets, images, adversarial)
    synthesis.loss = recording
    synthesis.synthesise(0, adversarial=True)
    draws = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 8, 8, generator=draws)
    torch.randint(0, 3, (4,), generator=draws)  # the targets
    shifts = torch.randint(-1, 2, (2,), generator=draws).tolist()
    jittered = torch.roll(x, shifts=shifts, dims=(2, 3))
    if bool(torch.rand((), generator=draws) < 0.5):
        jittered = jittered.flip(3)
    torch.testing.assert_close(seen["inputs"], jittered, rtol=0, atol=0)
    torch.testing.assert_close(seen["images"], jittered, rtol=0, atol=0)
    assert terms.total_variation(jittered) != pytest.approx(float(terms.total_variation(x)), rel=1e-6)


def test_deepinversion_gives_the_pool_the_rounds_final_images(float64_default):
    """The published code's best_inputs aliases the optimised tensor, which every later step updates and clips in
    place: the pool receives the images the round's last step leaves, not the lowest-loss step's."""
    synthesis = _deepinversion(n_steps=3)
    leaves, first = [], []
    jitter = synthesis.jitter

    def recording(x):
        leaves.append(x)
        first.append(x.detach().clone())
        return jitter(x)
    synthesis.jitter = recording
    images, _ = synthesis.synthesise(0, adversarial=True)
    assert len(leaves) == 3 and all(leaf is leaves[0] for leaf in leaves)
    final = (leaves[0].detach() * 0.25 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, final, rtol=0, atol=0)
    for before in first:  # none of the batches a loss was computed on
        assert not torch.equal((before * 0.25 + 0.5).clamp(0, 1), images)


def test_the_objective_keeps_float64_through_every_term(float64_default):
    """A float64 run stays float64 in every term of the generator objective (the L2 prior was float32 once)."""
    teacher = _teacher()
    objectives = ObjectiveSettings(method="deepinversion", tv=0.5, image_l2=0.25).resolved()
    objective = GeneratorObjective(objectives, StepSettings(backend="eager").resolved(cifar_context("deepinversion")),
                                   teacher, torch.device("cpu"), average_per_round=True)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64) * 3 + 1e-3
    s, t = _logits(8, (4, 3)), _logits(9, (4, 3))
    objective.start_collecting()
    teacher(x)
    bn_inputs, classifier_inputs = objective.stop_collecting()
    targets = torch.tensor([0, 2, 1, 1])
    loss = objective.loss(s, t, bn_inputs, classifier_inputs, targets=targets, images=x)
    assert loss.dtype == torch.float64
    h = bn_inputs[0]
    prior = prior_of_statistics([(h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False))],
                                [teacher.bn.running_mean], [teacher.bn.running_var])
    expected = (terms.competition_loss(s, t) + 10 * prior + F.cross_entropy(t, targets)
                + 0.5 * terms.total_variation(x) + 0.25 * torch.sqrt((x ** 2).sum()))
    assert float(loss) == pytest.approx(float(expected), rel=1e-13)
    assert terms.image_square_sum(x).dtype == torch.float64


def test_round_averages_of_the_prior_update_once_per_round(float64_default):
    teacher = _teacher()
    objectives = ObjectiveSettings(method="fast").resolved()
    objective = GeneratorObjective(objectives, StepSettings(backend="eager"), teacher, torch.device("cpu"),
                                   average_per_round=True)
    statistics = []
    for k in range(3):
        x = torch.rand(6, 4, 4, 4) + k
        statistics.append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))
        objective._bn_prior([x])
    assert float(objective.averaged) == 0  # nothing averaged within the round
    objective.end_round()
    torch.testing.assert_close(objective.averages[0], torch.stack(statistics[-1]))
    x = torch.rand(6, 4, 4, 4)
    blended = objective._with_averages([(x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))])
    torch.testing.assert_close(blended[0][0], 0.1 * x.mean((0, 2, 3)) + 0.9 * statistics[-1][0])


# -- settings -----------------------------------------------------------------------------------------------------

def test_the_published_settings_of_the_pool_methods():
    fast, deepinversion = METHODS["fast"], METHODS["deepinversion"]
    assert (fast.adversarial, fast.adversarial_loss, fast.bn_prior, fast.bn_momentum, fast.one_hot,
            fast.one_hot_targets, fast.batch_size, fast.z_dim, fast.temperature, fast.n_student_steps) == \
        (1.1, "decision-kl", 10, 0.9, 0.4, "random", 256, 256, 20, 400)
    assert METHODS["fast"].synthesis_learning_rates == {2: (5e-3, 0.015), 5: (3e-3, 0.01), 10: (2e-3, 0.01)}
    assert (deepinversion.adversarial_loss, deepinversion.bn_prior, deepinversion.one_hot, deepinversion.tv,
            deepinversion.n_generator_steps) == ("competition", 10, 1, 2.5e-5, 1000)
    cifar = TrainConfig.from_flat({"method": "fast", "dataset": "cifar10"}).zero_shot()
    cifar = cifar.resolved(cifar_context("fast"))
    assert (cifar.loop.iterations, cifar.pool.warmup, cifar.pool.reset_round, cifar.pool.kd_lr,
            cifar.loop.n_student_steps) == (220, 20, 140, 0.2, 400)


def cifar_context(method):
    from zskt_fast.engine.settings.parts import DATASET_DEFAULTS, Context
    return Context(DATASET_DEFAULTS["cifar10"], method=method)


@pytest.mark.parametrize("steps", [2, 5, 10])
def test_generator_steps_choose_the_published_learning_rates(steps, capsys):
    parser = train_cli.build_parser()
    args = parser.parse_args(["--method", "fast", "--generator-steps", str(steps)])
    config = train_cli.settings_from_args(TrainConfig, args, seed=0).resolved()
    assert config.loop.n_generator_steps == steps
    assert (config.pool.synthesis_lr, config.pool.z_lr) == METHODS["fast"].synthesis_learning_rates[steps]


@pytest.mark.parametrize("values, message", [
    ({"method": "fast", "n_generator_steps": 3}, "published learning rates are for 2, 5, 10 steps"),
    ({"method": "fast", "pool_size": 100}, "pool_size 100 is smaller than one batch \\(256 images\\)"),
    ({"method": "fast", "warmup": 30}, "warmup 30 leaves none of the 30 rounds"),
    ({"method": "zskt", "pool_size": 1000},
     "pool_size applies to the pool methods \\(fast, deepinversion, nayer, cmi\\)"),
    ({"method": "dfq", "one_hot_targets": "random"}, "one_hot_targets 'random' applies to the pool methods"),
    ({"method": "fast", "student_loss": "kl-at"}, "the pool methods \\(fast\\) train on pool batches"),
    ({"method": "fast", "cuda_graphs": True, "device": "cpu"}, "cuda_graphs"),
])
def test_bad_pool_settings_are_one_line_errors_before_any_folder(values, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_flat(values).resolved()
    argv = []
    for k, v in values.items():
        argv += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}={v}"]
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_teacher_without_batch_norm_is_refused_before_any_folder(tmp_path):
    teacher = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    for method in ("fast", "deepinversion"):
        with pytest.raises(ValueError, match="reads the statistics of the teacher's BatchNorm2d layers"):
            zskt_fast.distill(teacher, _Tiny(), image_shape=(1, 8, 8), method=method, iterations=2, warmup=0,
                              batch_size=4, out=tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


# -- whole runs ---------------------------------------------------------------------------------------------------

def _config(**overrides):
    values = dict(iterations=4, warmup=1, n_generator_steps=2, n_student_steps=3, batch_size=16, eval_every=2,
                  log_every=1, checkpoint_every=1, tensorboard=False, amp="off", pool_size=48)
    return TrainConfig.from_flat({**values, **overrides})


def _records(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds_per_iteration"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["fast", "deepinversion"])
def test_a_pool_run_resumes_bit_for_bit_with_its_pool(method, tmp_path, teacher_cache):
    train(_config(method=method), tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train(_config(method=method), tmp_path / "killed", progress=False, callbacks=[kill_after(3)])
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 2 and state["pool_method"]["pool"]["count"] == 32
    assert state["pool_method"]["pool"]["images"].dtype == torch.uint8
    summary = train(None, tmp_path / "killed", resume=True, progress=False)
    assert _records(tmp_path / "whole") == _records(tmp_path / "killed")
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["pool_method"]
    resumed = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["pool_method"]
    assert torch.equal(whole["pool"]["images"], resumed["pool"]["images"]) and resumed["pool"]["count"] == 48
    a = torch.load(tmp_path / "whole" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["method"] == method and [h["iteration"] for h in summary["history"]] == [2, 4]
    assert (tmp_path / "killed" / "pool.png").is_file()
    assert (tmp_path / "killed" / "images" / "round_000004.png").is_file()
    assert (tmp_path / "whole" / "generator.pt").is_file() == (method == "fast")
    records = _records(tmp_path / "whole")
    assert "loss_student" not in records[0] and all("loss_student" in r for r in records[1:])  # warm-up round
    assert [r["pool_images"] for r in records] == [16, 32, 48, 48]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_pool_methods_train_in_mixed_precision(amp, tmp_path, teacher_cache):
    summary = train(_config(method="fast", amp=amp, iterations=2, checkpoint_every=0), tmp_path / amp,
                    progress=False)
    assert summary["amp"] == amp
    assert all(math.isfinite(r["loss_synthesis"]) for r in _records(tmp_path / amp))


def test_distill_runs_deepinversion_on_any_networks_and_leaves_the_teacher_as_it_was(capsys):
    teacher, student = _teacher(), _Tiny()
    result = zskt_fast.distill(teacher, student, image_shape=(1, 8, 8), method="deepinversion", iterations=2,
                               warmup=0, n_generator_steps=2, n_student_steps=2, batch_size=8, progress=True)
    assert result.generator is None and result.summary["pool_images"] == 16
    printed = capsys.readouterr()
    assert "pool: up to 16 images, 1.0 KiB as 8-bit pixels; augmentation shift" in printed.out + printed.err
    assert all(not m._forward_pre_hooks for m in teacher.modules())


def test_the_help_names_the_pool_methods(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("FastDFKD, Fang et al. 2022", "DeepInversion, Yin et al. 2020", "--generator-steps",
                  "--pool-size", "--kd-lr", "--warmup", "146 MiB"):
        assert words in text


def test_a_torchvision_teacher_and_student_run_fast():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=4).eval()
    student = torchvision.models.mobilenet_v3_small(num_classes=4)
    result = zskt_fast.distill(teacher, student, image_shape=(3, 32, 32), method="fast", iterations=2, warmup=1,
                               n_generator_steps=2, n_student_steps=1, batch_size=4, progress=False)
    assert result.summary["pool_images"] == 8 and result.generator.output == "sigmoid"
    assert all(not m._forward_pre_hooks for m in teacher.modules())
