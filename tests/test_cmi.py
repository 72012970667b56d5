"""CMI (method cmi): the contrastive term and the instance means against their formulas in float64 (values,
gradients, gradcheck, bad input), the local view's resized crops, the round's re-initialisation, the memory bank, the
student's step schedule, and whole runs (resume bit for bit with the bank)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from zskt_fast.engine.loops.pool import resized_crop
from zskt_fast.engine.loops.pool_steps import PoolStudentSteps
from zskt_fast.engine.methods.contrastive import ContrastiveSynthesis, MemoryBank
from zskt_fast.engine.methods.objectives import GeneratorObjective
from zskt_fast.engine.settings.config import TrainConfig
from zskt_fast.engine.settings.rounds import PoolSettings
from zskt_fast.engine.settings.zero_shot import ObjectiveSettings, StepSettings
from zskt_fast.engine.trainer import train
from zskt_fast.models import Generator
from zskt_fast.ops.data_free_losses import contrastive_loss, instance_means

from conftest import Killed, TinyNet, kill_after, metric_records, warmed_teacher


def _embeddings(rows, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(rows, dim, generator=g, dtype=torch.float64), dim=1),
            F.normalize(torch.randn(rows, dim, generator=g, dtype=torch.float64), dim=1))


def _reference(local, global_, current, temperature):
    rows = local.shape[0]
    losses = []
    for i in range(rows):
        logits = [float(local[i] @ global_[j]) / temperature for j in range(rows)]
        top = max(logits)
        losses.append(-(logits[i] - top - math.log(sum(math.exp(v - top) for v in logits))))
    first = sum(losses[:current]) / current
    return first + (sum(losses[current:]) / (rows - current) if rows > current else 0.0)


@pytest.mark.parametrize("rows, current", [(1, 1), (4, 4), (7, 3)])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_the_contrastive_term_is_its_formula(rows, current, temperature):
    local, global_ = _embeddings(rows)
    value = contrastive_loss(local, global_, current, temperature=temperature)
    assert float(value) == pytest.approx(_reference(local, global_, current, temperature), rel=1e-12, abs=1e-14)
    strided = torch.stack([local, local], dim=2)[:, :, 0]  # a non-contiguous view of the same rows
    assert float(contrastive_loss(strided, global_, current, temperature=temperature)) == pytest.approx(
        float(value), rel=1e-12)


def test_the_contrastive_term_has_the_gradient_of_its_formula_and_none_through_the_global_views():
    local, global_ = _embeddings(6)
    local.requires_grad_()
    torch.autograd.gradcheck(lambda x: contrastive_loss(x, global_, 4, temperature=0.2), (local,))
    global_.requires_grad_()
    contrastive_loss(local, global_, 4, temperature=0.2).backward()
    assert global_.grad is None and local.grad is not None
    values = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(instance_means, (values,))


def test_instance_means_are_each_samples_channel_means():
    x = torch.randn(3, 2, 5, 7, dtype=torch.float64)
    expected = torch.tensor([[float(x[b, c].sum()) / 35 for c in range(2)] for b in range(3)], dtype=torch.float64)
    torch.testing.assert_close(instance_means(x), expected, rtol=1e-12, atol=1e-14)
    assert instance_means(x.float()).dtype == torch.float32 and instance_means(x[:1, :1, :1, :1]).shape == (1, 1)


def test_bad_input_to_the_contrastive_terms_is_refused():
    local, global_ = _embeddings(4)
    with pytest.raises(ValueError, match="one shape"):
        contrastive_loss(local, global_[:3], 2, temperature=0.2)
    with pytest.raises(ValueError, match="current must count the batch's rows, 1 to 4, got 0"):
        contrastive_loss(local, global_, 0, temperature=0.2)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(local, global_, 2, temperature=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        instance_means(torch.zeros(0, 2, 3, 3))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        instance_means(torch.zeros(2, 3))


# -- the local view -----------------------------------------------------------------------------------------------

def test_a_whole_image_crop_is_the_image_or_its_mirror(float64_default):
    images = torch.rand(6, 2, 5, 5)
    out = resized_crop(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flips = torch.rand(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[4] < 0.5
    for image, result, flip in zip(images, out, flips):
        torch.testing.assert_close(result, image.flip(-1) if flip else image, rtol=1e-12, atol=1e-12)
    share = resized_crop(images[2:4], torch.Generator().manual_seed(0), slice(2, 4), 6, scale=(1.0, 1.0),
                         ratio=(1.0, 1.0))
    torch.testing.assert_close(share, out[2:4], rtol=0, atol=0)  # a rank's share takes the global batch's draws
    crops = resized_crop(images.requires_grad_(), torch.Generator().manual_seed(1))
    assert crops.shape == images.shape and crops.sum().grad_fn is not None
    assert not torch.allclose(crops, out)


# -- the synthesis ----------------------------------------------------------------------------------------------------

class _Tiny(TinyNet):
    def forward(self, x):
        return super().forward(x), []


def _synthesis(batch=6, n_steps=2, seed=3, **rounds):
    torch.manual_seed(0)
    teacher = warmed_teacher(_Tiny(), (1, 8, 8))
    objectives = ObjectiveSettings(method="cmi").resolved()
    steps = StepSettings(batch_size=batch, amp="off", compile="off", backend="eager")
    settings = dict(synthesis_lr=1e-3, z_lr=1e-3, warmup=0, contrastive=0.8, contrastive_temperature=0.2,
                    head_dim=4, bank_size=10, negatives=5, synthesis_batch=batch)
    pool = PoolSettings(**{**settings, **rounds})
    objective = GeneratorObjective(objectives, steps, teacher, torch.device("cpu"), average_per_round=True)
    return ContrastiveSynthesis(Generator(8, 8, 1, output="sigmoid"), teacher, _Tiny().eval(), objective, steps,
                                pool, image_shape=(1, 8, 8), num_classes=3, n_steps=n_steps,
                                normalisation=((0.5,), (0.25,)), augmentation="shift", device=torch.device("cpu"),
                                world=None, seed=seed)


def test_each_round_reinitialises_the_generator_as_cmi_does(float64_default):
    """reset_model: every linear and convolution weight from N(0, 0.02), every BatchNorm2d weight from N(1, 0.02),
    their biases 0, in module order."""
    synthesis = _synthesis()
    generator = synthesis.generator
    state = synthesis.draws.get_state()
    synthesis.reset_generator()
    draws = torch.Generator()
    draws.set_state(state)
    for name, module in generator.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            mean = 1.0 if isinstance(module, torch.nn.BatchNorm2d) else 0.0
            expected = mean + 0.02 * torch.randn(module.weight.shape, generator=draws)
            torch.testing.assert_close(module.weight.detach(), expected, rtol=0, atol=0, msg=name)
            assert not module.bias.any(), name


def test_the_bank_takes_each_rounds_best_features_and_lends_negatives_from_the_second(float64_default):
    synthesis = _synthesis(batch=6, bank_size=10, negatives=5)
    images, loss = synthesis.synthesise(0, adversarial=True)
    assert images.shape == (6, 1, 8, 8) and synthesis.bank.count == 6 and math.isfinite(float(loss))
    assert synthesis.bank.features.shape == (10, 8)  # local and global instance means of the teacher's 4 channels
    seen = []
    step = synthesis.step

    def recording(images, targets, adversarial):
        seen.append(synthesis.bank.count)
        return step(images, targets, adversarial)
    synthesis.step = recording
    synthesis.synthesise(1, adversarial=True)
    assert seen == [6, 6] and synthesis.bank.count == 10 and synthesis.bank.next == 2
    assert any(m._forward_pre_hooks for m in synthesis.teacher.modules())
    synthesis.remove_hooks()
    synthesis.objective.remove_hooks()
    assert all(not m._forward_pre_hooks for m in synthesis.teacher.modules())


def test_the_memory_bank_replaces_its_oldest_and_draws_without_replacement():
    bank = MemoryBank(4, 2, torch.device("cpu"))
    bank.add(torch.arange(6.0).view(3, 2))
    bank.add(torch.arange(6.0, 10.0).view(2, 2))
    assert bank.count == 4 and bank.next == 1
    assert bank.features[:, 0].tolist() == [8.0, 2.0, 4.0, 6.0]
    drawn = bank.sample(3, torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 2) and len(set(drawn[:, 0].tolist())) == 3
    copy = MemoryBank(4, 2, torch.device("cpu"))
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.features, bank.features) and (copy.count, copy.next) == (4, 1)


def test_the_students_learning_rate_drops_tenfold_at_the_milestones():
    """CMI's MultiStepLR at 120, 150 and 180 of 200 epochs: fractions 0.6, 0.75, 0.9 of the rounds."""
    net = _Tiny()
    steps = StepSettings(batch_size=4, amp="off", compile="off", backend="eager")
    rounds = PoolSettings(kd_lr=0.1, kd_weight_decay=1e-4, warmup=0, kd_milestones=[0.6, 0.75, 0.9])
    student = PoolStudentSteps(net, net, None, steps, rounds, normalisation=((0.0,), (1.0,)), augmentation="none",
                               device=torch.device("cpu"), world=None, seed=0)
    rates = {r: student.set_learning_rate(r, 200) for r in (0, 119, 120, 149, 150, 179, 180, 199)}
    assert rates == pytest.approx({0: 0.1, 119: 0.1, 120: 0.01, 149: 0.01, 150: 1e-3, 179: 1e-3, 180: 1e-4,
                                   199: 1e-4}, rel=1e-12)


# -- whole runs -------------------------------------------------------------------------------------------------------

def _config(**overrides):
    values = dict(method="cmi", iterations=3, n_generator_steps=2, n_student_steps=2, batch_size=8, negatives=4,
                  eval_every=1, log_every=1, checkpoint_every=1, tensorboard=False, amp="off")
    return TrainConfig.from_flat({**values, **overrides})



def test_a_cmi_run_resumes_bit_for_bit_with_its_bank(tmp_path, teacher_cache):
    train(_config(), tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train(_config(), tmp_path / "killed", progress=False, callbacks=[kill_after(2)])
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["pool_method"]["synthesis"]
    assert state["bank"]["count"] == 8
    train(None, tmp_path / "killed", resume=True, progress=False)
    records = metric_records(tmp_path / "whole")
    assert records == metric_records(tmp_path / "killed") and [r["pool_images"] for r in records] == [8, 16, 24]
    a, b = (torch.load(tmp_path / name / "student.pt", weights_only=True)["state_dict"] for name in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lr_student"] for r in records] == pytest.approx([0.1, 0.1, 1e-3])  # milestones at rounds 2, 2, 3 of 3


def test_cmi_settings_are_checked(capsys):
    with pytest.raises(ValueError, match="contrastive applies to cmi, not to fast"):
        TrainConfig.from_flat({"method": "fast", "contrastive": 0.5}).resolved()
    with pytest.raises(ValueError, match="kd_milestones must lie between 0 and 1"):
        TrainConfig.from_flat({"method": "cmi", "kd_milestones": [1.5]}).resolved()
    with pytest.raises(ValueError, match="contrastive_temperature must be"):
        TrainConfig.from_flat({"method": "cmi", "contrastive_temperature": 0}).resolved()
