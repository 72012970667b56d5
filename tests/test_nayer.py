"""NAYER (method nayer): the label generator against its definition (each row's noisy layer, the re-drawn noise, the
rebuild), the balanced targets, the rebuild schedule, a round's loops and the student's mode in them, one synthesis
step against Adam's step on the formula's gradient, the label embedding files, and whole runs (resume bit for bit,
refusals before any folder)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import zskt_fast
from zskt_fast import train as train_cli
from zskt_fast.engine.lifecycle.checkpoint import load_generator
from zskt_fast.engine.loops.loop import synthesis_and_pool
from zskt_fast.engine.methods.nayer import NoisyLabelSynthesis, label_embedding
from zskt_fast.engine.methods.objectives import GeneratorObjective
from zskt_fast.engine.settings.config import TrainConfig
from zskt_fast.engine.settings.rounds import PoolSettings
from zskt_fast.engine.settings.zero_shot import ObjectiveSettings, StepSettings
from zskt_fast.engine.trainer import train
from zskt_fast.models import LabelGenerator

from conftest import Killed, TinyNet, kill_after, metric_records, pool_objective_by_hand, warmed_teacher


class _Tiny(TinyNet):
    """TinyNet with the (logits, features) output that the engine's steps read."""

    def forward(self, x):
        return super().forward(x), []


def _generator(classes=3, batch=7, width=5, seed=0):
    torch.manual_seed(seed)
    embedding = torch.randn(classes, width)
    return LabelGenerator(embedding, 4, 1, synthesis_batch=batch, noisy_width=6, ngf=2)


# -- the generator ----------------------------------------------------------------------------------------------------

def test_each_row_takes_the_noisy_layer_of_its_chunk_of_classes(float64_default):
    """Rows k*C .. (k+1)*C - 1 of the synthesis batch go through noisy layer k (C classes): 7 rows of 3 classes take
    layers 0, 0, 0, 1, 1, 1, 2; a share of the batch (a data-parallel rank) from its offset takes the same layers."""
    generator = _generator().eval()
    with torch.no_grad():  # running statistics away from 0 and 1, so that the BatchNorm shows
        generator.embedding_norm.running_mean.uniform_(-1, 1)
        generator.embedding_norm.running_var.uniform_(0.5, 2)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    norm = generator.embedding_norm
    embedded = (generator.embedding[targets] - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) \
        * norm.weight + norm.bias
    layers = [0, 0, 0, 1, 1, 1, 2]
    hidden = torch.stack([generator.noisy[k](embedded[i]) for i, k in enumerate(layers)])
    expected = generator.body(generator.project(hidden).view(7, 4, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(generator(targets), expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(generator(targets[2:5], offset=2), expected[2:5], rtol=1e-12, atol=1e-14)
    assert len(generator.noisy) == 3 and expected.shape == (7, 1, 4, 4)
    with pytest.raises(ValueError, match="rows 5..7 lie outside the synthesis batch of 7"):
        generator(targets[:3], offset=5)
    with pytest.raises(ValueError, match="targets must be a non-empty"):
        generator(targets[:0])


def test_the_noise_is_redrawn_from_the_standard_normal_with_zero_biases():
    generator = _generator()
    generator.redraw_noise(torch.Generator().manual_seed(4))
    draws = torch.Generator().manual_seed(4)
    for layer in generator.noisy:
        assert torch.equal(layer.weight.detach(), torch.randn(layer.weight.shape, generator=draws))
        assert not layer.bias.any()


def test_a_rebuild_equals_a_newly_built_generator():
    generator = _generator(seed=1)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(1.0)
        generator(torch.tensor([0, 1, 2]))  # running statistics of a batch
    generator.reinitialise(11)
    torch.manual_seed(11)
    fresh = LabelGenerator(generator.embedding, 4, 1, synthesis_batch=7, noisy_width=6, ngf=2)
    for (name, a), b in zip(generator.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_label_generators_are_refused():
    with pytest.raises(ValueError, match=r"\[classes, width\] tensor, got \(3,\)"):
        LabelGenerator(torch.zeros(3), 4, 1, synthesis_batch=4)
    with pytest.raises(ValueError, match="multiple of 4"):
        LabelGenerator(torch.zeros(3, 2), 6, 1, synthesis_batch=4)


# -- the synthesis ----------------------------------------------------------------------------------------------------

def _synthesis(batch=7, n_steps=1, warmup=1, loops=2, warmup_loops=3, life=2, seed=3, **objective):
    torch.manual_seed(0)
    teacher = warmed_teacher(_Tiny())
    student = _Tiny()
    objectives = ObjectiveSettings(method="nayer", **objective).resolved()
    steps = StepSettings(batch_size=4, amp="off", compile="off", backend="eager")
    rounds = PoolSettings(synthesis_lr=0.05, warmup=warmup, loops=loops, warmup_loops=warmup_loops,
                          generator_life=life, synthesis_batch=batch)
    objective = GeneratorObjective(objectives, steps, teacher, torch.device("cpu"), average_per_round=True)
    generator = _generator(batch=batch)
    return NoisyLabelSynthesis(generator, teacher, student.eval(), objective, steps, rounds, image_shape=(1, 4, 4),
                               num_classes=3, n_steps=n_steps, normalisation=((0.0,), (1.0,)),
                               augmentation="none", device=torch.device("cpu"), world=None, seed=seed)


def test_the_targets_are_every_class_in_order_then_a_random_remainder():
    synthesis = _synthesis(batch=7)
    targets = synthesis.balanced_targets()
    assert targets[:6].tolist() == [0, 1, 2, 0, 1, 2]
    remainder = torch.randint(0, 3, (1,), generator=torch.Generator().manual_seed(3))
    assert targets[6:].tolist() == remainder.tolist()


def test_the_generator_is_rebuilt_when_the_round_or_the_round_less_the_warmup_is_a_multiple_of_its_life():
    synthesis = _synthesis(warmup=3, life=10)
    assert [r for r in range(30) if synthesis.rebuilds_at(r)] == [0, 3, 10, 13, 20, 23]
    assert not any(_synthesis(life=0).rebuilds_at(r) for r in range(5))


def test_a_round_takes_its_loops_with_the_student_in_train_mode_after_the_first():
    """warmup_loops in a warm-up round, loops after, a batch each; as published, the student is in eval mode in a
    round's first loop and in train mode in its later ones."""
    synthesis = _synthesis(warmup=1, loops=2, warmup_loops=3, n_steps=2)
    modes = []
    synthesis.student.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    images, loss = synthesis.synthesise(0, adversarial=False)
    assert images.shape == (21, 1, 4, 4) and modes == [] and loss.shape == ()
    synthesis.student.eval()
    images, _ = synthesis.synthesise(1, adversarial=True)
    assert images.shape == (14, 1, 4, 4) and modes == [False, False, True, True]


def test_one_step_is_adams_step_along_the_gradient_of_the_weighted_terms(float64_default):
    """bn 10 x the prior + oh 0.5 x CE(t, targets) + adv 1.33 x decision-adversarial KL, computed here from the
    formulas; Adam's first step moves each weight by lr * g / (|g| + eps)."""
    synthesis = _synthesis(batch=7, n_steps=1, warmup=0, loops=1, life=0, bn_momentum=0.0)
    generator, teacher, student = synthesis.generator, synthesis.teacher, synthesis.student
    draws = torch.Generator().manual_seed(3)
    reference = _generator(batch=7)
    reference.load_state_dict(generator.state_dict())
    reference.redraw_noise(draws)
    targets = torch.cat([torch.arange(3).repeat(2), torch.randint(0, 3, (1,), generator=draws)])
    x = reference(targets)
    total = pool_objective_by_hand(teacher, student, x, targets, bn=10.0, one_hot=0.5, adversarial=1.33)
    params = list(reference.parameters())
    gradients = torch.autograd.grad(total, params, allow_unused=True)
    images, loss = synthesis.synthesise(0, adversarial=True)
    assert float(loss) == pytest.approx(float(total.detach()), rel=1e-12)
    torch.testing.assert_close(images, x.detach(), rtol=0, atol=0)
    for (name, after), before, g in zip(generator.named_parameters(), params, gradients):
        expected = before.detach() - 0.05 * g / (g.abs() + 1e-8) if g is not None else before.detach()
        torch.testing.assert_close(after.detach(), expected, rtol=1e-9, atol=1e-9, msg=name)


def test_the_adversarial_term_joins_with_the_students_first_round():
    """NAYER's counter (ep > warmup after its increment): the adversarial term and the student's steps start in the
    same round, where FastDFKD's adversarial term starts one round earlier."""
    class Rounds:
        adversarial_lead = 0

        def __init__(self):
            self.flags, self.pool, self.student_steps = [], self, self

        def synthesise(self, round_index, adversarial):
            self.flags.append(adversarial)
            return torch.zeros(1), torch.zeros(())

        def add(self, images):
            pass

        def set_learning_rate(self, *args):
            pass

    nayer = Rounds()
    synthesis_and_pool(nayer, rounds=5, warmup=2, n_student_steps=0)
    assert nayer.flags == [False, False, True, True, True]
    fast = Rounds()
    fast.adversarial_lead = 1
    synthesis_and_pool(fast, rounds=5, warmup=2, n_student_steps=0)
    assert fast.flags == [False, True, True, True, True]


# -- the label embedding ----------------------------------------------------------------------------------------------

def test_the_label_embeddings(tmp_path):
    random = label_embedding("random", 4)
    assert random.shape == (4, 512) and torch.equal(random, label_embedding("random", 4))
    assert torch.equal(label_embedding("one-hot", 3), torch.eye(3, dtype=torch.float64))
    table = torch.arange(6.0).view(3, 2)
    torch.save(table, tmp_path / "e.pt")
    torch.save({"embedding": table}, tmp_path / "d.pt")
    (tmp_path / "e.csv").write_text("0, 1\n2, 3\n\n4, 5\n")
    for name in ("e.pt", "d.pt", "e.csv"):
        assert torch.equal(label_embedding(str(tmp_path / name), 3), table.double()), name
    (tmp_path / "ragged.txt").write_text("0 1\n2\n")
    (tmp_path / "nan.txt").write_text("0 1\nnan 2\n")
    errors = {"ragged.txt": "same count of numbers", "nan.txt": "NaN or infinite",
              "e.csv": r"shape \(3, 2\); the teacher has 2 classes"}
    for name, message in errors.items():
        with pytest.raises(ValueError, match=message):
            label_embedding(str(tmp_path / name), 2)
    with pytest.raises(ValueError, match="no such file"):
        label_embedding(str(tmp_path / "missing.pt"), 2)
    with pytest.raises(ValueError, match="a file ending in"):
        label_embedding(str(tmp_path / "e.json"), 2)


# -- whole runs -------------------------------------------------------------------------------------------------------

def _config(**overrides):
    values = dict(method="nayer", iterations=3, warmup=1, n_generator_steps=2, n_student_steps=2, batch_size=8,
                  synthesis_batch=12, warmup_loops=2, loops=1, eval_every=1, log_every=1, checkpoint_every=1,
                  tensorboard=False, amp="off")
    return TrainConfig.from_flat({**values, **overrides})



def test_a_nayer_run_resumes_bit_for_bit_and_writes_its_generator(tmp_path, teacher_cache):
    train(_config(), tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train(_config(), tmp_path / "killed", progress=False, callbacks=[kill_after(2)])
    train(None, tmp_path / "killed", resume=True, progress=False)
    records = metric_records(tmp_path / "whole")
    assert records == metric_records(tmp_path / "killed")
    assert [r["pool_images"] for r in records] == [24, 36, 48]  # 2 loops of 12 in the warm-up, then 1 a round
    a, b = (torch.load(tmp_path / name / "student.pt", weights_only=True)["state_dict"] for name in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    generator = load_generator(tmp_path / "whole" / "generator.pt")
    assert isinstance(generator, LabelGenerator) and generator.embedding.shape == (10, 512)
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["label_embedding"] == "random" and config["synthesis_batch"] == 12


@pytest.mark.parametrize("values, message", [
    ({"method": "fast", "loops": 2}, "loops applies to nayer, not to fast"),
    ({"method": "deepinversion", "label_embedding": "one-hot"}, "label_embedding applies to nayer"),
    ({"method": "nayer", "label_embedding": "nowhere.pt"}, "label_embedding 'nowhere.pt': give 'random'"),
    ({"method": "nayer", "loops": 0}, "loops must be"),
    ({"method": "nayer", "generator_life": -1}, "generator_life must be"),
])
def test_bad_nayer_settings_are_one_line_errors_before_any_folder(values, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_flat(values).resolved()
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_embedding_of_other_classes_is_refused_before_any_folder(tmp_path, teacher_cache, capsys):
    (tmp_path / "three.txt").write_text("1 0\n0 1\n1 1\n")
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--method", "nayer", "--label-embedding", str(tmp_path / "three.txt"), "--out",
                        str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "the teacher has 10 classes" in err and not (tmp_path / "out").exists()


def test_distill_runs_nayer_on_any_networks(capsys):
    torch.manual_seed(0)
    teacher, student = TinyNet(), TinyNet()
    teacher.eval()
    result = zskt_fast.distill(teacher, student, image_shape=(1, 8, 8), method="nayer", iterations=2, warmup=1,
                               warmup_loops=1, loops=2, n_generator_steps=1, n_student_steps=1, batch_size=4,
                               synthesis_batch=6, label_embedding="one-hot", progress=False)
    assert result.summary["pool_images"] == 18 and isinstance(result.generator, LabelGenerator)
    assert result.generator.embedding.shape == (3, 3) and math.isfinite(result.summary["student_acc"] or 0.0)
    assert all(not m._forward_pre_hooks for m in teacher.modules())


class _Colour(torch.nn.Module):
    """A three-channel classifier with one BatchNorm layer (CIFAR's shapes)."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("method", ["nayer", "cmi"])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_the_new_methods_run_at_cifar_shapes_and_in_mixed_precision(method, amp):
    torch.manual_seed(0)
    teacher, student = _Colour().eval(), _Colour()
    loops = {"warmup_loops": 1, "loops": 2, "synthesis_batch": 8} if method == "nayer" else {"negatives": 8}
    result = zskt_fast.distill(teacher, student, image_shape=(3, 32, 32), method=method, iterations=2, warmup=1,
                               n_generator_steps=1, n_student_steps=1, batch_size=8, amp=amp, progress=False,
                               normalisation=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), **loops)
    assert result.summary["amp"] == amp and result.summary["pool_images"] == (24 if method == "nayer" else 16)
    images = result.generator(torch.arange(4)) if method == "nayer" else result.generator(torch.randn(4, 256))
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()
