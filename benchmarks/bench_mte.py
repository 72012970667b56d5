"""Transition curves, batched (zskt_fast.mte) against the per-image, per-class loop of the authors' code (written out
from its description: batch 1, a full backward through A for each step).

CPU case: N = 100 images, K = 20 steps (ZSKT_BENCH_SMOKE=1: N = 4, K = 2), WRN-16-1 (A) against WRN-16-2 (B) on
the digits test set (8x8), both briefly trained so that they agree on most images. GPU case (also run where a GPU exists): N = 1000, K = 100, WRN-16-1 against
WRN-40-2 at 32x32 on random images around ten random prototypes, the networks fitted to them for a few steps so
that they agree on most (the first 1000 on which they agree are used); the per-image loop
runs on the first 10 of them and is scaled by images, since all 1000 would take hours.

    pytest benchmarks/bench_mte.py --benchmark-json=benchmarks/out/mte.json && python benchmarks/report.py ...
"""
import pytest
import torch
import torch.nn.functional as F

from harness import SMOKE
from zskt_fast.engine.experiments.transition_curves import select_matching_images, transition_curves
from zskt_fast.models import build_classifier

HAS_CUDA = torch.cuda.is_available()


def per_image_loop(net_a, net_b, images, classes, steps, step_size=1.0):
    """The authors' way: one image and one target class at a time (batch 1), a full backward through A (its weight
    gradients included, zeroed before each step) and an in-place update of the image."""
    num_classes = net_a(images[:1])[0].shape[1]
    for x0, i in zip(images, classes.tolist()):
        for k in range(num_classes - 1):
            j = torch.tensor([(i + k + 1) % num_classes], device=images.device)
            x = x0[None].clone().requires_grad_(True)
            for _ in range(steps):
                logits_a = net_a(x)[0]
                with torch.no_grad():
                    logits_b = net_b(x)[0]
                loss = F.cross_entropy(logits_a, j)
                net_a.zero_grad()
                loss.backward()
                x.data -= step_size * x.grad.data
                x.grad.data.zero_()
                with torch.no_grad():
                    F.softmax(logits_a, 1)[0, j]
                    F.softmax(logits_b, 1)[0, j]


def _digits_case():
    from zskt_fast.data import evaluation_loader, load_dataset
    from zskt_fast.engine.settings.config import PretrainConfig
    from zskt_fast.engine.experiments.supervised import train_classifier

    nets = []
    for arch in ("wrn-16-1", "wrn-16-2"):
        torch.manual_seed(0)
        net = build_classifier(arch, in_channels=1)
        train_classifier(net, load_dataset("digits", train=True, augment=True), evaluation_loader("digits"),
                         PretrainConfig.from_flat({"epochs": 1 if SMOKE else 3, "device": "cpu"}).resolved(),
                         progress=False)
        nets.append(net.eval())
    images = load_dataset("digits", train=False).tensors[0]
    n_images, steps = (4, 2) if SMOKE else (100, 20)
    return {"name": f"cpu: digits 8x8, WRN-16-1 vs WRN-16-2, N={n_images}, K={steps}", "nets": nets,
            "images": images, "device": torch.device("cpu"), "n_images": n_images, "steps": steps,
            "loop_images": n_images}


def _fit_to_shared_labels(nets, images, labels, device, steps=100):
    """Random networks each predict nearly one class everywhere, so they rarely agree. A few Adam steps on the same
    labelled images make them agree on most images, at no change in their cost."""
    for net in nets:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for step in range(steps):
            batch = torch.randint(0, len(images), (128,), generator=torch.Generator().manual_seed(step))
            loss = F.cross_entropy(net(images[batch].to(device))[0], labels[batch].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()


def _prototype_images(n, channels=3, size=32, classes=10):
    """Ten random prototype images plus noise: labelled images that any network learns in a few steps."""
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randn(classes, channels, size, size, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return prototypes[labels] + torch.randn(n, channels, size, size, generator=gen), labels


def _gpu_case():
    torch.manual_seed(0)
    nets = [build_classifier(arch).cuda() for arch in ("wrn-16-1", "wrn-40-2")]
    images, labels = _prototype_images(5000)
    _fit_to_shared_labels(nets, images, labels, torch.device("cuda"))
    return {"name": "gpu: 32x32, WRN-16-1 vs WRN-40-2, N=1000, K=100", "nets": nets, "images": images,
            "device": torch.device("cuda"), "n_images": 1000, "steps": 100, "loop_images": 10}


CASES = [pytest.param(_digits_case, id="cpu-digits")]
if HAS_CUDA:
    CASES.append(pytest.param(_gpu_case, id="gpu-32x32"))


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return request.param()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("method", ["batched", "per-image loop"])
def test_transition_curves(benchmark, case, method):
    net_a, net_b = case["nets"]
    device = case["device"]
    benchmark.group = f"transition curves, {case['name']}"
    if method == "batched":
        images = case["n_images"]

        def run():
            transition_curves(net_a, net_b, case["images"], n_images=images, steps=case["steps"], device=device,
                              progress=False)
            _sync(device)
    else:
        images = case["loop_images"]
        chosen, classes, _ = select_matching_images(net_a, net_b, case["images"], images, device)

        def run():
            per_image_loop(net_a, net_b, chosen.to(device), classes, case["steps"])
            _sync(device)
    benchmark.extra_info.update(method=method, images=images, steps=case["steps"])
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0 if method != "batched" else 1)
