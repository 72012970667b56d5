"""The trainer on a GPU: CUDA-graph replay equals eager steps, capture changes nothing, AMP runs, the CLI default.
Skipped, with the reason, where there is no GPU."""
import json

import pytest
import torch

from zskt_fast import train as train_cli
from zskt_fast.engine.loops.loop import zero_shot_knowledge_transfer
from zskt_fast.engine.settings.zero_shot import ObjectiveSettings, StepSettings
from zskt_fast.models import Generator, build_classifier

from conftest import HAS_CUDA, algorithm_one

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and none is present")]


def _steps(graphed, dtype=torch.float32, objectives=None, **settings):
    torch.manual_seed(0)
    nets = [build_classifier("wrn-16-2"), build_classifier("wrn-16-1"), Generator(z_dim=32, image_size=32)]
    nets = [n.to("cuda", dtype) for n in nets]
    settings = {"amp": "off", "channels_last": False, "compile": "off", **settings}  # as written unless given
    return algorithm_one(*nets, StepSettings(batch_size=16, z_dim=32, **settings), objectives=objectives,
                         device="cuda", graphed=graphed)


def _state(steps):
    return {**{f"S.{k}": v.clone() for k, v in steps.student.state_dict().items()},
            **{f"G.{k}": v.clone() for k, v in steps.generator.state_dict().items()}}


@pytest.mark.parametrize("averages", [{}, {"student_ema": 0.9, "generator_ema": 0.9}], ids=["plain", "averages"])
def test_graph_replay_equals_eager_steps(averages, float64_default):
    # float64 and the eager loss: what is compared is the capture and replay, not kernel rounding. With the weight
    # averages, their eager updates after each replay and the momentum generator inside the images graph.
    results = []
    for graphed in (False, True):
        steps = _steps(graphed, torch.float64, backend="eager", **averages)
        if graphed:
            steps.set_learning_rates(0, 4)
            steps.capture(generator_passes=3)
        zero_shot_knowledge_transfer(steps, iterations=4, n_generator_steps=1, n_student_steps=3)
        torch.cuda.synchronize()
        results.append({**_state(steps), **{f"{part}.{k}": v.clone() for part in ("average", "momentum_generator")
                                            if getattr(steps, part) is not None
                                            for k, v in getattr(steps, part).module.state_dict().items()}})
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize("objectives", [{"method": "dfq", "bn_momentum": 0.9}, {"method": "dafl"},
                                        {"method": "dfad"}], ids=lambda o: "-".join(map(str, o.values())))
def test_graph_replay_equals_eager_steps_for_every_method(objectives, float64_default):
    """The prior's hooks collect inside the captured generator step, and its moving averages (restored after the
    warm-up like the weights) advance on every replay as they do eagerly."""
    results = []
    for graphed in (False, True):
        torch.manual_seed(0)
        nets = [n.to("cuda", torch.float64) for n in (build_classifier("wrn-16-2"), build_classifier("wrn-16-1"),
                                                      Generator(z_dim=32, image_size=32))]
        steps = algorithm_one(*nets, StepSettings(batch_size=16, z_dim=32, amp="off", channels_last=False,
                                                  compile="off", backend="eager"),
                              objectives=ObjectiveSettings(**objectives), device="cuda", graphed=graphed)
        if graphed:
            steps.set_learning_rates(0, 4)
            steps.capture(generator_passes=3)
        zero_shot_knowledge_transfer(steps, iterations=4, n_generator_steps=1, n_student_steps=3)
        torch.cuda.synchronize()
        results.append({**_state(steps), **{f"averages.{i}": a.clone() for i, a in
                                            enumerate(steps.objective.state_tensors())}})
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-9, atol=1e-10, msg=key)


def test_capture_leaves_every_weight_statistic_and_optimiser_state_as_it_was():
    steps = _steps(True, amp="bf16")
    before = _state(steps)
    steps.set_learning_rates(0, 10)
    steps.capture()
    after = _state(steps)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    for optimizer in (steps.optimizer_G, steps.optimizer_S):
        for state in optimizer.state.values():
            assert state["step"].item() == 0 and state["exp_avg"].abs().sum().item() == 0


def _train_a_few_iterations(graphs, iterations, **settings):
    """Runs `iterations` iterations (n_S = 2); returns the losses of each and the state before and after."""
    steps = _steps(graphs, channels_last=True, **settings)
    if graphs:
        steps.set_learning_rates(0, iterations)
        steps.capture(generator_passes=2)
    before = _state(steps)
    losses = []
    zero_shot_knowledge_transfer(steps, iterations=iterations, n_generator_steps=1, n_student_steps=2,
                                 on_iteration_end=lambda it, out: losses.append(
                                     (out["loss_G"].item(), out["loss_S"].item())))
    return losses, before, _state(steps)


@pytest.mark.parametrize("amp, graphs", [("bf16", True), ("bf16", False), ("fp16", False), ("off", True)])
def test_amp_and_graph_variants_train(amp, graphs):
    losses, before, after = _train_a_few_iterations(graphs, 5, amp=amp)
    assert all(torch.isfinite(torch.tensor(pair)).all() for pair in losses)
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("S."))
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("G."))


@pytest.mark.slow
@pytest.mark.parametrize("compile, graphs", [("default", True), ("reduce-overhead", False)])
def test_compiled_steps_train_inside_our_graphs_and_with_their_own(compile, graphs):
    """The two GPU variants of the compiled steps that the trainer benchmark times: mode default inside this trainer's
    CUDA graphs (compiled during capture's warm-up), and reduce-overhead with inductor's own graphs."""
    losses, before, after = _train_a_few_iterations(graphs, 4, amp="bf16", compile=compile)
    assert all(torch.isfinite(torch.tensor(pair)).all() for pair in losses)
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("S."))


def test_cli_on_the_gpu_uses_amp_and_graphs(tmp_path, teacher_cache):
    assert train_cli.main(["--iterations", "20", "--eval-every", "10", "--out", str(tmp_path), "--no-progress",
                           "--no-tensorboard"]) == 0
    config = json.loads((tmp_path / "seed0" / "config.json").read_text())
    assert config["device"] == "cuda" and config["cuda_graphs"] is True and config["compile"] == "off"
    summary = json.loads((tmp_path / "seed0" / "summary.json").read_text())
    assert summary["student_acc"] > 10


def test_graph_replay_gives_the_generator_the_batchnorm_updates_of_n_passes(float64_default):
    """Under CUDA-graph replay the images pass updates the generator's BatchNorm statistics as n_S train-mode passes
    would, as in eager mode."""
    steps = _steps(True, torch.float64, backend="eager")
    steps.set_learning_rates(0, 4)
    steps.capture(generator_passes=4)
    z = steps.sample_noise()
    norm = steps.generator.body[0]
    before = norm.running_mean.clone(), norm.num_batches_tracked.clone()
    steps.images_and_teacher(z, 4)
    with torch.no_grad():
        batch_mean = steps.generator.project(z).view(z.shape[0], 128, 8, 8).mean((0, 2, 3))
    expected = (0.9 ** 4) * before[0] + (1 - 0.9 ** 4) * batch_mean
    torch.testing.assert_close(norm.running_mean, expected, rtol=1e-9, atol=1e-12)
    assert norm.num_batches_tracked.item() == before[1].item() + 4
    with pytest.raises(ValueError, match="captured for 4 generator passes"):
        steps.images_and_teacher(z, 3)


@pytest.mark.parametrize("student_kind", ["torchvision (fx)", "untraceable (hooks)"])
def test_any_network_in_cuda_graphs_equals_eager_steps(student_kind, float64_default):
    """Features taken by torch.fx and by forward hooks replay inside CUDA graphs as they run eagerly."""
    import zskt_fast
    from test_features import Untraceable

    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        teacher = build_classifier("tv:resnet18")
        student = build_classifier("tv:mobilenet_v3_small") if student_kind.startswith("torchvision") else \
            Untraceable()
        result = zskt_fast.distill(teacher, student, image_shape=(3, 32, 32), iterations=3, batch_size=8,
                                   n_student_steps=2, backend="eager", amp="off", compile="off", cuda_graphs=graphs,
                                   channels_last=False, device="cuda", progress=False)
        assert result.summary["cuda_graphs"] is graphs
        results.append({k: v.clone() for k, v in result.student.state_dict().items()})
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize("method, amp", [("fast", "bf16"), ("fast", "fp16"), ("deepinversion", "bf16"),
                                         ("nayer", "bf16"), ("cmi", "bf16"), ("cmi", "fp16")])
def test_the_pool_methods_run_on_the_gpu(method, amp, tmp_path, teacher_cache):
    """The pool methods on CUDA (no graphs: refused for them), in mixed precision, with their pool on the device."""
    assert train_cli.main(["--method", method, "--amp", amp, "--iterations", "3", "--warmup", "1",
                           "--n-generator-steps", "2", "--n-student-steps", "5", "--out", str(tmp_path),
                           "--no-progress", "--no-tensorboard"]) == 0
    config = json.loads((tmp_path / "seed0" / "config.json").read_text())
    assert config["device"] == "cuda" and config["cuda_graphs"] is False
    summary = json.loads((tmp_path / "seed0" / "summary.json").read_text())
    assert summary["pool_images"] == config["pool_size"] and summary["student_acc"] > 10  # every image synthesised
