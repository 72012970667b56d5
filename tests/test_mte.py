"""Transition curves and MTE: the batched version against a per-image, per-class loop written from the spec."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zskt_fast import mte
from zskt_fast.engine.experiments.transition_curves import select_matching_images, transition_curves
from zskt_fast.models import build_classifier


def _nets(num_classes=5, seed=0, noise=0.05):
    """A small WRN pair that agrees on most inputs: B is A with perturbed weights. float64 for tight comparisons."""
    torch.manual_seed(seed)
    a = build_classifier("wrn-10-1", num_classes=num_classes, in_channels=1).double().eval()
    b = build_classifier("wrn-10-1", num_classes=num_classes, in_channels=1).double().eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in b.parameters():
            p.add_(noise * torch.randn_like(p))
    return a, b


def _images(n=40, seed=1):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_curves(net_a, net_b, images, n_images, steps, step_size, labels=None, order=None):
    """Algorithm 2 one image and one target class at a time, as the paper states it; with `labels`, the source class
    is the label (the authors' code); `order` is the order in which the images are tried."""
    p_a, p_b, chosen = [], [], 0
    for index in (range(len(images)) if order is None else order):
        x0 = images[index]
        if chosen == n_images:
            break
        with torch.no_grad():
            i = net_a(x0[None])[0].argmax(1).item()
            if net_b(x0[None])[0].argmax(1).item() != i:
                continue
            if labels is not None:
                i = int(labels[index])
        chosen += 1
        num_classes = net_a(x0[None])[0].shape[1]
        rows_a, rows_b = [], []
        for k in range(num_classes - 1):
            j = (i + k + 1) % num_classes
            x = x0.clone()[None]
            curve_a, curve_b = [], []
            for _ in range(steps):
                x.requires_grad_(True)
                logits_a = net_a(x)[0]
                with torch.no_grad():
                    curve_a.append(F.softmax(logits_a, 1)[0, j].item())
                    curve_b.append(F.softmax(net_b(x)[0], 1)[0, j].item())
                (grad,) = torch.autograd.grad(F.cross_entropy(logits_a, torch.tensor([j])), x)
                x = (x - step_size * grad).detach()
            rows_a.append(curve_a)
            rows_b.append(curve_b)
        p_a.append(rows_a)
        p_b.append(rows_b)
    return torch.tensor(p_a, dtype=torch.float64), torch.tensor(p_b, dtype=torch.float64)


@pytest.mark.parametrize("max_batch", [None, 7])
def test_batched_curves_equal_the_per_image_loop(max_batch):
    net_a, net_b = _nets()
    images = _images()
    curves = transition_curves(net_a, net_b, images, n_images=6, steps=5, step_size=0.5, max_batch=max_batch,
                               progress=False)
    ref_a, ref_b = reference_curves(net_a, net_b, images, 6, 5, 0.5)
    assert curves.p_a.shape == (6, 4, 5)
    torch.testing.assert_close(curves.p_a.double(), ref_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(curves.p_b.double(), ref_b, rtol=0, atol=1e-6)
    assert curves.mte == pytest.approx((ref_a - ref_b).abs().mean().item(), abs=1e-6)
    assert curves.p_a[:, :, -1].mean() > curves.p_a[:, :, 0].mean()  # the steps do push toward the target class


def test_networks_keep_their_parameters_modes_and_no_gradients():
    net_a, net_b = _nets()
    net_a.train()
    before = [{k: v.clone() for k, v in n.state_dict().items()} for n in (net_a, net_b)]
    transition_curves(net_a, net_b, _images(), n_images=3, steps=3, progress=False)
    assert net_a.training and not net_b.training
    for net, state in zip((net_a, net_b), before):
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # BN statistics included
        assert all(p.grad is None for p in net.parameters())


def test_selection_takes_the_first_matching_images_in_order():
    net_a, net_b = _nets(noise=0.5)
    images = _images(60)
    with torch.no_grad():
        pred_a, pred_b = net_a(images)[0].argmax(1), net_b(images)[0].argmax(1)
    expected = (pred_a == pred_b).nonzero().flatten()[:5]
    assert len(expected) == 5 and expected[-1] > 4  # some images were skipped
    chosen, classes, indices = select_matching_images(net_a, net_b, images, 5, "cpu", batch_size=7)
    assert torch.equal(indices, expected) and torch.equal(classes, pred_a[expected])
    assert torch.equal(chosen, images[expected])
    curves = transition_curves(net_a, net_b, images, n_images=5, steps=1, progress=False)
    assert torch.equal(curves.indices, expected)
    for n, i in enumerate(curves.sources.tolist()):
        assert sorted(curves.targets[n].tolist()) == sorted(set(range(5)) - {i})


def test_loader_and_tensor_inputs_agree():
    net_a, net_b = _nets()
    images = _images()
    labels = torch.zeros(len(images), dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=9)
    one = transition_curves(net_a, net_b, images, n_images=4, steps=2, progress=False)
    two = transition_curves(net_a, net_b, loader, n_images=4, steps=2, progress=False)
    three = transition_curves(net_a, net_b, (images, labels), n_images=4, steps=2, progress=False)
    assert torch.equal(one.indices, two.indices) and torch.equal(one.indices, three.indices)
    torch.testing.assert_close(one.p_a, two.p_a)


def test_mte_of_a_network_with_itself_is_zero():
    net_a, _ = _nets()
    assert mte.mean_transition_error(net_a, net_a, _images(), n_images=4, steps=3, progress=False) == 0.0


def test_errors():
    net_a, net_b = _nets()
    other = build_classifier("wrn-10-1", num_classes=7, in_channels=1).double().eval()
    with pytest.raises(ValueError, match="network A predicts 5 classes and network B 7"):
        transition_curves(net_a, other, _images(), n_images=1, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"predict the same class on only \d+ of the 40 images given; 41 were asked"):
        transition_curves(net_a, net_b, _images(), n_images=41, steps=1, progress=False)
    # allow_fewer: the curves of the images there are, the same as asking for exactly that many
    fewer = transition_curves(net_a, net_b, _images(), n_images=41, steps=2, progress=False, allow_fewer=True)
    found = len(fewer.sources)
    assert 0 < found < 41 and fewer.p_a.shape[0] == found
    exact = transition_curves(net_a, net_b, _images(), n_images=found, steps=2, progress=False)
    assert torch.equal(exact.p_a, fewer.p_a) and torch.equal(exact.indices, fewer.indices)
    for kwargs, message in (({"steps": 0}, "steps must be an integer >= 1"),
                            ({"step_size": 0.0}, "step_size must be a finite number > 0"),
                            ({"step_size": -1.0}, "step_size must be a finite number > 0"),
                            ({"n_images": 0}, "n_images must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            transition_curves(net_a, net_b, _images(), **{"n_images": 2, **kwargs}, progress=False)


def test_memory_budget_sets_the_chunk_size():
    net_a, net_b = _nets()
    small = transition_curves(net_a, net_b, _images(), n_images=4, steps=2, memory_budget=1, progress=False)
    large = transition_curves(net_a, net_b, _images(), n_images=4, steps=2, progress=False)
    torch.testing.assert_close(small.p_a, large.p_a, rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, teacher_cache):
    from zskt_fast.engine.settings.config import TrainConfig
    from zskt_fast.engine.trainer import train

    folder = tmp_path_factory.mktemp("run") / "seed0"
    train(TrainConfig.from_flat(dict(iterations=30, batch_size=32, eval_every=30, tensorboard=False, compile="off")),
          folder, progress=False)
    return folder


def test_cli_on_a_train_run_and_a_second_student(short_run, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.manual_seed(5)
    net = build_classifier("wrn-16-1", in_channels=1)
    torch.save({"state_dict": net.state_dict()}, other)  # no recorded architecture: named with --arch-a
    out = tmp_path / "mte"
    code = mte.main(["--run", str(short_run), "--net-a", str(other), "--arch-a", "wrn-16-1", "--n-images", "8",
                     "--steps", "4", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| zero-shot wrn-16-1 |" in printed and "| other |" in printed
    summary = json.loads((out / "mte.json").read_text())
    assert [r["name"] for r in summary["results"]] == ["zero-shot wrn-16-1", "other"]
    assert summary["arch_b"] == "wrn-16-2" and summary["n_images"] == 8
    assert (out / "transition_curves.png").stat().st_size > 1000
    saved = np.load(out / summary["results"][0]["curves"])
    assert saved["p_a"].shape == (8, 9, 4) and float(saved["mte"]) == pytest.approx(summary["results"][0]["mte"])


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--step-size", "0"], "step_size must be a finite number > 0"),
    (["--n-images", "0"], "n_images must be an integer >= 1"),
    ([], "give --run RUN_FOLDER, or --net-a"),
    (["--n-images", "5000"], "were asked for"),
])
def test_cli_errors(short_run, argv, message, capsys):
    run = ["--run", str(short_run)] if argv else []
    with pytest.raises(SystemExit) as exit_info:
        mte.main(run + argv + ["--no-progress", "--steps", "1"] if "--steps" not in argv else run + argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("source", ["agreed", "label"])
@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_source_class_and_order_of_the_authors_code(source, shuffle_seed):
    """--source label takes the data set's label as the source class, --shuffle-seed a seeded random order of the
    images; both against the one-image-at-a-time loop."""
    net_a, net_b = _nets()
    images = _images()
    labels = torch.randint(0, 5, (len(images),), generator=torch.Generator().manual_seed(9))
    curves = transition_curves(net_a, net_b, (images, labels), n_images=4, steps=3, step_size=0.5, source=source,
                               shuffle_seed=shuffle_seed, progress=False)
    order = None if shuffle_seed is None else torch.randperm(40, generator=torch.Generator().manual_seed(shuffle_seed))
    ref_a, ref_b = reference_curves(net_a, net_b, images, 4, 3, 0.5, labels=labels if source == "label" else None,
                                    order=order)
    torch.testing.assert_close(curves.p_a.double(), ref_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(curves.p_b.double(), ref_b, rtol=0, atol=1e-6)
    expected_indices = (order if order is not None else torch.arange(40))
    assert all(int(i) in expected_indices.tolist() for i in curves.indices)
    if source == "label":
        assert torch.equal(curves.sources, labels[curves.indices])
    with pytest.raises(ValueError, match="source 'label' needs labels"):
        transition_curves(net_a, net_b, images, n_images=2, steps=1, source="label", progress=False)
