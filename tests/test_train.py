"""The trainer: Algorithm 1's loop semantics, backends agreeing, resume equivalence, outputs, CLI errors."""
import copy
import json

import pytest
import torch

from zskt_fast import train as train_cli
from zskt_fast.engine.settings.config import TrainConfig
from zskt_fast.engine.loops.loop import zero_shot_knowledge_transfer
from zskt_fast.engine.settings.zero_shot import StepSettings
from zskt_fast.engine.lifecycle.schedules import cosine_lr
from zskt_fast.engine.settings.parts import Context
from zskt_fast.engine.lifecycle.speed import default_amp
from zskt_fast.engine.trainer import train
from zskt_fast.models import Generator, build_classifier

from conftest import Killed, algorithm_one, kill_after


def _tiny_steps(beta=250.0, grad_clip=5.0, backend="auto", batch_size=8, seed=0, compile="off"):
    torch.manual_seed(seed)
    teacher = build_classifier("wrn-16-2", in_channels=1)
    student = build_classifier("wrn-16-1", in_channels=1)
    generator = Generator(z_dim=16, image_size=8, channels=1)
    settings = StepSettings(batch_size=batch_size, z_dim=16, beta=beta, grad_clip=grad_clip, backend=backend,
                            compile=compile, amp="off", channels_last=False)
    return algorithm_one(teacher, student, generator, settings, seed=seed)


class RecordingSteps:
    """Wraps real steps and records what each piece received."""

    def __init__(self, steps):
        self.steps, self.calls = steps, []

    def __getattr__(self, name):
        return getattr(self.steps, name)

    def sample_noise(self):
        z = self.steps.sample_noise()
        self.calls.append(("noise", z))
        return z

    def generator_step(self, z):
        self.calls.append(("generator", z))
        return self.steps.generator_step(z)

    def images_and_teacher(self, z, generator_passes=1):
        images, teacher = self.steps.images_and_teacher(z, generator_passes)
        self.calls.append(("images", z, images, teacher))
        return images, teacher

    def student_step(self, images, teacher):
        self.calls.append(("student", images, teacher))
        return self.steps.student_step(images, teacher)


def test_loop_step_counts_and_reuse_of_noise_images_and_teacher_outputs():
    steps = RecordingSteps(_tiny_steps())
    teacher_before = {k: v.clone() for k, v in steps.teacher.state_dict().items()}
    seen = []
    zero_shot_knowledge_transfer(steps, iterations=2, n_generator_steps=2, n_student_steps=3,
                                 on_iteration_end=lambda it, out: seen.append(it))
    kinds = [c[0] for c in steps.calls]
    assert kinds == ["noise", "generator", "generator", "images", "student", "student", "student"] * 2
    assert seen == [0, 1]
    for first in (0, 7):
        it_calls = steps.calls[first:first + 7]
        z = it_calls[0][1]
        assert all(c[1] is z for c in it_calls[1:4])  # one z for the generator steps and the images
        images, teacher = it_calls[3][2], it_calls[3][3]
        assert all(c[1] is images and c[2] is teacher for c in it_calls[4:])  # images and T(x) computed once
        assert not images.requires_grad and not teacher.logits.requires_grad
    assert not torch.equal(steps.calls[0][1], steps.calls[7][1])  # a new z every iteration
    # The teacher: frozen, in eval mode, its weights and statistics untouched.
    assert not steps.teacher.training and not any(p.requires_grad for p in steps.teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in steps.teacher.state_dict().items())


def test_generator_step_updates_only_the_generator_and_student_step_only_the_student():
    steps = _tiny_steps()
    gen_before = [p.clone() for p in steps.generator.parameters()]
    student_before = [p.clone() for p in steps.student.parameters()]
    steps.generator_step(steps.sample_noise())
    assert all(p.grad is None for p in steps.student.parameters())  # no student weight gradients computed
    assert any(not torch.equal(p, b) for p, b in zip(steps.generator.parameters(), gen_before))
    assert all(torch.equal(p, b) for p, b in zip(steps.student.parameters(), student_before))
    gen_after = [p.clone() for p in steps.generator.parameters()]
    images, teacher = steps.images_and_teacher(steps.sample_noise())
    steps.student_step(images, teacher)
    assert all(torch.equal(p, b) for p, b in zip(steps.generator.parameters(), gen_after))
    assert any(not torch.equal(p, b) for p, b in zip(steps.student.parameters(), student_before))


def test_gradients_are_clipped_before_every_update():
    steps = _tiny_steps(grad_clip=0.01)
    norms = {"G": [], "S": []}
    for name, optimizer in (("G", steps.optimizer_G), ("S", steps.optimizer_S)):
        def record(opt, args, kwargs, name=name):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms[name].append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        optimizer.register_step_pre_hook(record)
    zero_shot_knowledge_transfer(steps, iterations=2, n_generator_steps=1, n_student_steps=2)
    assert len(norms["G"]) == 2 and len(norms["S"]) == 4
    assert all(n <= 0.01 * (1 + 1e-4) for n in norms["G"] + norms["S"])
    # unclipped, these gradients are far larger than the bound
    fresh = _tiny_steps()
    images, teacher = fresh.images_and_teacher(fresh.sample_noise())
    logits, feats = fresh.student(images)
    from zskt_fast import zskt_student_loss
    zskt_student_loss(logits, teacher.logits, feats, teacher.features).backward()
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in fresh.student.parameters()])) > 0.1


def test_learning_rates_follow_the_cosine_schedule():
    steps = _tiny_steps()
    lrs = []
    zero_shot_knowledge_transfer(steps, iterations=4, n_generator_steps=1, n_student_steps=1,
                                 on_iteration_end=lambda it, out: lrs.append(
                                     (steps.optimizer_G.param_groups[0]["lr"],
                                      steps.optimizer_S.param_groups[0]["lr"])))
    import math
    assert lrs[0] == (1e-3, 2e-3)
    assert lrs[2] == pytest.approx((1e-3 * 0.5 * (1 + math.cos(math.pi / 2)), 2e-3 * 0.5))
    assert cosine_lr(1.0, 4, 4) == 0.0


def test_fused_and_eager_loss_backends_give_the_same_weights(float64_default):
    # In float64: Adam's first steps move each weight by about lr * sign(gradient), so in float32 a gradient that is
    # zero up to rounding can flip sign between two correct implementations and move a weight by 2 * lr.
    results = []
    for backend in ("cpu", "eager"):
        steps = _tiny_steps(backend=backend)
        zero_shot_knowledge_transfer(steps, iterations=3, n_generator_steps=1, n_student_steps=3)
        results.append((steps.student.state_dict(), steps.generator.state_dict()))
        assert steps.student.conv1.weight.dtype == torch.float64
    for fused, eager in zip(*results):
        for key in fused:
            torch.testing.assert_close(fused[key], eager[key], rtol=1e-9, atol=1e-10, msg=key)
    moved = _tiny_steps().student.state_dict()
    assert not torch.allclose(moved["conv1.weight"], results[0][0]["conv1.weight"])  # training did change them


@pytest.mark.slow
def test_compiled_steps_give_the_weights_of_eager_steps(float64_default):
    """torch.compile of the three steps (networks + fused losses fullgraph, clipping + Adam) changes only the order
    of floating-point work: in float64 the weights after three iterations agree to 1e-7 relative (measured: 2.6e-9).
    The learning rate changes every iteration without recompiling (a tensor filled in place)."""
    import torch._dynamo.utils

    results = []
    for compile in ("off", "default"):
        steps = _tiny_steps(compile=compile)
        torch._dynamo.utils.counters.clear()
        zero_shot_knowledge_transfer(steps, iterations=3, n_generator_steps=1, n_student_steps=2)
        results.append((steps.student.state_dict(), steps.generator.state_dict()))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    recompiles = torch._dynamo.utils.counters["recompiles"]
    assert not recompiles, dict(recompiles)
    for compiled, eager in zip(*results):
        for key in compiled:
            torch.testing.assert_close(compiled[key], eager[key], rtol=1e-7, atol=1e-9, msg=key)


def test_compile_modes_that_capture_graphs_are_refused_with_ours():
    with pytest.raises(ValueError, match="captures CUDA graphs of its own"):
        TrainConfig.from_flat({"compile": "reduce-overhead", "cuda_graphs": True, "device": "cpu"}).resolved()
    with pytest.raises(ValueError, match="compile must be one of"):
        StepSettings(compile="fast").resolved(Context())


def _config(**overrides):
    # Eager steps: compiling costs about a minute per run (compiled steps have their own tests here).
    values = dict(iterations=6, batch_size=16, eval_every=3, log_every=2, checkpoint_every=2, tensorboard=False,
                  compile="off")
    values.update(overrides)
    return TrainConfig.from_flat(values)


def test_resume_continues_a_killed_run_to_the_same_result(tmp_path, teacher_cache):
    train(_config(), tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train(_config(), tmp_path / "killed", progress=False, callbacks=[kill_after(5)])
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["iteration"] == 4
    resumed = train(TrainConfig(), tmp_path / "killed", resume=True, progress=False)
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert resumed["student_acc"] == whole["student_acc"]
    assert [(h["iteration"], h["student_acc"]) for h in resumed["history"]] == \
        [(h["iteration"], h["student_acc"]) for h in whole["history"]]
    for name in ("student.pt", "generator.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "killed" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name

    def strip(path):
        return [{k: v for k, v in r.items() if k != "seconds_per_iteration"}
                for r in map(json.loads, path.read_text().splitlines())]
    assert strip(tmp_path / "whole" / "metrics.jsonl") == strip(tmp_path / "killed" / "metrics.jsonl")


def test_same_seed_same_result_and_run_folder_contents(tmp_path, teacher_cache):
    a = train(_config(checkpoint_every=0), tmp_path / "a", progress=False)
    b = train(_config(checkpoint_every=0), tmp_path / "b", progress=False)
    assert a["student_acc"] == b["student_acc"]
    folder = tmp_path / "a"
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "student.pt", "generator.pt", "summary.json",
                 "images/iter_000003.png", "images/iter_000006.png"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    # the resolved settings are recorded: amp auto as what it picked on this CPU
    assert config["teacher"] == "wrn-16-2" and config["amp"] == default_amp(torch.device("cpu"))
    assert config["cuda_graphs"] is False
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 3, 4, 6]
    for key in ("loss_generator", "loss_student", "teacher_max_prob", "student_max_prob", "lr_generator",
                "lr_student", "seconds_per_iteration"):
        assert key in records[0], key
    assert records[0]["loss_generator"] < 0 < records[0]["loss_student"]
    assert "student_acc" in records[1] and "student_acc" in records[3]
    assert 0.1 <= records[0]["teacher_max_prob"] <= 1


@pytest.mark.slow
def test_end_to_end_digits_run_beats_chance(tmp_path, teacher_cache, capsys):
    """The default run as a user starts it (a short run: eager steps, which the header explains)."""
    code = train_cli.main(["--iterations", "60", "--eval-every", "30", "--out", str(tmp_path), "--no-progress",
                           "--no-tensorboard"])
    assert code == 0
    summary = json.loads((tmp_path / "seed0" / "summary.json").read_text())
    assert summary["teacher_acc"] > 95
    assert summary["student_acc"] > 30  # chance is 10%
    out = capsys.readouterr().out
    assert "student test accuracy" in out and "teacher test accuracy" in out
    assert "compile off (auto: 60 iterations, fewer than the 5000 a compilation pays off in)" in out
    assert json.loads((tmp_path / "seed0" / "config.json").read_text())["compile"] == "off"


def test_a_run_recorded_before_compile_existed_resumes_with_eager_steps():
    recorded = TrainConfig.from_flat({"device": "cpu", "iterations": 80_000}).resolved().to_dict()
    assert recorded["compile"] == "default"
    del recorded["compile"]
    assert TrainConfig.from_dict(recorded).steps.compile == "off"


def test_several_seeds_report_mean_and_std(tmp_path, teacher_cache, capsys):
    code = train_cli.main(["--iterations", "2", "--batch-size", "8", "--seeds", "0", "1", "--out", str(tmp_path),
                           "--no-progress", "--compile", "off"])  # TensorBoard on: used when installed
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["runs"]) == 2
    assert "over 2 seeds" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--teacher-ckpt", "/nonexistent/teacher.pt"], "teacher checkpoint not found: /nonexistent/teacher.pt"),
    (["--student", "resnet-18"], "cannot be paired layer by layer"),
    (["--student", "vgg-11"], "unknown architecture 'vgg-11'"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent"], "cifar10 not found: looked for /nonexistent"),
    (["--iterations", "0"], "iterations must be an integer >= 1"),
    (["--beta", "-1"], "beta must be a finite number >= 0"),
    (["--student-lr", "0"], "student_lr must be a finite number > 0"),
    (["--cuda-graphs", "--device", "cpu"], "CUDA graphs need a CUDA device"),
    (["--seeds", "1", "1"], "--seeds has repeats"),
    (["--resume", "/nonexistent/run"], "no config.json there"),
])
def test_cli_errors(argv, message, capsys, tmp_path, teacher_cache):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(argv + (["--out", str(tmp_path)] if "--resume" not in argv else []) + ["--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cifar10_without_teacher_says_how_to_get_one(tmp_path, capsys, teacher_cache, monkeypatch):
    from zskt_fast.engine import trainer
    monkeypatch.setattr(trainer, "evaluation_loader", lambda *a, **k: [])  # pretend the data set is there
    with pytest.raises(SystemExit):
        train_cli.main(["--dataset", "cifar10", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert "no teacher checkpoint" in err and "python -m zskt_fast.pretrain --dataset cifar10 --arch wrn-40-2" in err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--iterations", "--n-generator-steps", "--n-student-steps", "--batch-size", "--z-dim",
                   "--generator-lr", "--student-lr", "--beta", "--temperature", "--teacher", "--student",
                   "--teacher-ckpt", "--dataset", "--device", "--seeds", "--amp", "--cuda-graphs", "--backend",
                   "--resume"):
        assert option in text, option
    assert "default: 0.002" in text and "digits 800" in text


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, teacher_cache, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--iterations", "4", "--batch-size", "8", "--log-every", "2", "--student-lr", "1e30",
                        "--generator-lr", "1e30", "--out", str(tmp_path), "--no-progress", "--no-tensorboard",
                        "--compile", "off"])
    assert exit_info.value.code == 1
    assert "training diverged: non-finite loss by iteration 2" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_with_nan(tmp_path, teacher_cache, capsys):
    with pytest.raises(Killed):
        train(_config(iterations=4, checkpoint_every=2), tmp_path / "run", progress=False, callbacks=[kill_after(3)])
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["steps"]["student"]["fc.weight"][0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--resume", str(tmp_path / "run"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "(student): fc.weight holds NaN or infinite values" in capsys.readouterr().err


def test_images_pass_gives_the_generator_the_batchnorm_updates_of_n_train_mode_passes(float64_default):
    """The authors' loop recomputes G(z) in train mode before each of the n_S student steps; one pass with the
    closed-form update leaves every BatchNorm statistic as n explicit passes do."""
    steps = _tiny_steps()
    steps.generator.double()
    steps.teacher.double()
    explicit = copy.deepcopy(steps.generator)
    z = steps.sample_noise().double()
    steps.images_and_teacher(z, 5)
    with torch.no_grad():
        for _ in range(5):
            explicit(z)
    for (name, ours), theirs in zip(steps.generator.state_dict().items(), explicit.state_dict().values()):
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14, msg=name)
    momenta = [m.momentum for m in steps.generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert momenta and all(m == 0.1 for m in momenta)  # restored


def test_generator_batchnorm_counts_n_g_plus_n_s_updates_per_iteration():
    steps = _tiny_steps()
    zero_shot_knowledge_transfer(steps, iterations=2, n_generator_steps=1, n_student_steps=10)
    assert steps.generator.body[0].num_batches_tracked.item() == 2 * (1 + 10)


def test_normalisation_follows_the_teacher_file(tmp_path, teacher_cache, capsys):
    """The run normalises with what the teacher file records (ours record it), else the data set's default (the
    authors' constants for CIFAR-10); --mean/--std override; the run's config and student.pt record what was used."""
    from zskt_fast.data import dataset_info
    from zskt_fast.engine.lifecycle.checkpoint import load_file

    cached = next((teacher_cache / "teachers").glob("digits-wrn-16-2.pt"))
    assert load_file(cached)["normalisation"] == {"mean": [0.3053], "std": [0.3758]}
    recorded = load_file(cached)
    recorded["normalisation"] = {"mean": [0.5], "std": [0.25]}
    torch.save(recorded, tmp_path / "recorded.pt")
    torch.save(recorded["state_dict"], tmp_path / "plain.pt")
    for teacher, expected in (("recorded.pt", ([0.5], [0.25])), ("plain.pt", ([0.3053], [0.3758]))):
        folder = tmp_path / f"run-{teacher}"
        train(_config(iterations=2, eval_every=2, teacher_ckpt=str(tmp_path / teacher)), folder, progress=False)
        config = json.loads((folder / "config.json").read_text())
        assert (config["mean"], config["std"]) == expected, teacher
        assert load_file(folder / "student.pt")["normalisation"] == {"mean": expected[0], "std": expected[1]}
    folder = tmp_path / "override"
    train(_config(iterations=2, eval_every=2, teacher_ckpt=str(tmp_path / "recorded.pt"), mean=[0.1], std=[0.2]),
          folder, progress=False)
    assert json.loads((folder / "config.json").read_text())["std"] == [0.2]
    with pytest.raises(SystemExit):
        train_cli.main(["--mean", "0.1", "0.2", "--std", "0.3", "0.4", "--out", str(tmp_path / "x"), "--no-progress"])
    assert "1 channel(s): mean and std need 1 value(s) each, got 2 and 2" in capsys.readouterr().err
    assert dataset_info("cifar10").std == (0.2023, 0.1994, 0.2010)  # the authors' constants
