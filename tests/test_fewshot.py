"""The few-shot KD+AT baseline: its loss against an independent float64 formula (the AT paper's, with its 1/2), the
M-per-class sampler, and the program's runs, resume and errors."""
import json

import pytest
import torch
import torch.nn.functional as F

import zskt_fast
from zskt_fast import fewshot
from zskt_fast.engine.settings.config import FewShotConfig
from zskt_fast.engine.experiments.fewshot import samples_per_class_indices, train_kd_at
from zskt_fast.ops import KD_ALPHA, KD_BETA, KD_TEMPERATURE

from conftest import Killed, kill_after, skip_unless_runnable


def _at_paper_loss(s_logits, t_logits, labels, s_features, t_features, alpha=0.9, T=4.0, beta=1000.0):
    """Zagoruyko & Komodakis's KD+AT written out: attention maps normalised per sample, their squared difference
    averaged, beta / 2 in front; KL between the softened outputs averaged over the batch, times T^2."""
    def at(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    kd = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
    attention = sum((at(s) - at(t)).pow(2).mean() for s, t in zip(s_features, t_features))
    return (1 - alpha) * F.cross_entropy(s_logits, labels) + alpha * kd + beta / 2 * attention


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_kd_at_loss_is_the_at_papers_formula_with_its_half(backend):
    skip_unless_runnable(backend, "cpu")
    assert (KD_ALPHA, KD_TEMPERATURE, KD_BETA) == (0.9, 4.0, 500.0)
    generator = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).requires_grad_()

    s_logits, t_logits = rand(6, 10, scale=3), rand(6, 10, scale=3)
    s_features = [rand(6, 4, 5, 3), rand(6, 8, 2, 2)]
    t_features = [rand(6, 7, 5, 3), rand(6, 3, 2, 2)]
    labels = torch.randint(0, 10, (6,), generator=generator)
    ours = zskt_fast.kd_at_loss(s_logits, t_logits, labels, s_features, t_features, backend=backend)
    theirs = _at_paper_loss(s_logits, t_logits, labels, s_features, t_features)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    inputs = [s_logits, *s_features]
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # beta = 0: KD alone; alpha = 0: cross-entropy alone
    torch.testing.assert_close(zskt_fast.kd_at_loss(s_logits, t_logits, labels, alpha=0.0, backend=backend),
                               F.cross_entropy(s_logits, labels))
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        zskt_fast.kd_at_loss(s_logits, t_logits, labels, alpha=1.5)
    with pytest.raises(ValueError, match="labels must be a \\[B\\] int64 tensor"):
        zskt_fast.kd_at_loss(s_logits, t_logits, labels.float())


def test_samples_per_class_are_exactly_m_per_class_and_fixed_by_the_seed():
    labels = torch.arange(5).repeat_interleave(torch.tensor([7, 3, 9, 4, 6]))
    chosen = samples_per_class_indices(labels, 3, seed=1)
    assert torch.bincount(labels[chosen]).tolist() == [3] * 5
    assert torch.equal(chosen, samples_per_class_indices(labels, "3", seed=1))
    assert not torch.equal(chosen, samples_per_class_indices(labels, 3, seed=2))
    assert torch.equal(samples_per_class_indices(labels, "all", seed=0), torch.arange(len(labels)))
    with pytest.raises(ValueError, match=r"class 1 \(one\), the smallest, has 3 training images, fewer than the 4 .* "
                                         r"at most 3"):
        samples_per_class_indices(labels, 4, seed=0, class_names=["zero", "one", "two", "three", "four"])


def _config(**overrides):
    values = dict(samples_per_class="2", iterations=6, batch_size=8, eval_every=3, device="cpu")
    values.update(overrides)
    return FewShotConfig.from_flat(values)


def test_a_run_writes_its_folder_and_resumes_to_the_same_weights(tmp_path, teacher_cache):
    whole = train_kd_at(_config(), tmp_path / "whole", progress=False)
    assert whole["images"] == 20 and whole["iterations"] == 6 and [h["iteration"] for h in whole["history"]] == [3, 6]
    indices = json.loads((tmp_path / "whole" / "indices.json").read_text())
    from zskt_fast.data import dataset_labels, load_dataset
    labels = dataset_labels(load_dataset("digits", train=True))
    assert torch.bincount(labels[indices]).tolist() == [2] * 10
    with pytest.raises(Killed):
        train_kd_at(_config(checkpoint_every=2), tmp_path / "cut", progress=False, callbacks=[kill_after(5)])
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["iteration"] == 4
    train_kd_at(None, tmp_path / "cut", resume=True, progress=False)
    a, b = (torch.load(tmp_path / name / "student.pt", weights_only=True)["state_dict"] for name in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_program_refuses_zero_shots_and_too_many(tmp_path, teacher_cache, capsys):
    for m, message in (("0", "that is zero-shot knowledge transfer, python -m zskt_fast.train"),
                       ("500", r"class \d+, the smallest, has 132 training images, fewer than the 500")):
        with pytest.raises(SystemExit) as exit_info:
            fewshot.main(["--samples-per-class", m, "--out", str(tmp_path / m), "--no-progress"])
        assert exit_info.value.code == 2
        assert __import__("re").search(message, capsys.readouterr().err)
    assert fewshot.main(["--samples-per-class", "1", "--iterations", "2", "--batch-size", "4", "--seeds", "0", "1",
                         "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert "KD+AT student accuracy over 2 seeds" in capsys.readouterr().out
