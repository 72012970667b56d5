"""Weight averages: the weight-averaged student (student_ema) and MAD's momentum generator (generator_ema): the moving
average against its formula, the momentum generator's images in the student's batch, and runs of both loops that
test, save and resume them."""
import pytest
import torch

import zskt_fast
from zskt_fast.engine.loops.weight_average import WARMUP_STEPS, WeightAverage

from conftest import Killed, TinyNet as _Tiny, algorithm_one, kill_after


def test_the_average_is_its_formula_with_the_warm_up(float64_default):
    torch.manual_seed(0)
    net = _Tiny()
    average = WeightAverage(net, decay=0.9)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for n in range(15):
        optimizer.zero_grad()
        net(torch.randn(5, 1, 4, 4)).square().mean().backward()  # a train-mode pass: the running statistics move
        optimizer.step()
        average.update()
        d = min(0.9, (1 + n) / (WARMUP_STEPS + n))
        for key, value in net.state_dict().items():
            expected[key] = d * expected[key] + (1 - d) * value if value.is_floating_point() else value.clone()
    for key, value in average.module.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-12, atol=1e-14, msg=key)
    assert average.updates == 15 and not any(p.requires_grad for p in average.module.parameters())
    assert not torch.equal(average.module.fc.weight, net.fc.weight)


def test_the_decay_is_checked():
    with pytest.raises(ValueError, match="student_ema must be in"):
        WeightAverage(_Tiny(), 1.0)
    with pytest.raises(ValueError, match="student_ema must be in \\[0, 1\\), got 1.5"):
        zskt_fast.distill(_Tiny(), _Tiny(), image_shape=(1, 8, 8), student_ema=1.5, progress=False)


SHORT = {"zskt": dict(iterations=6, batch_size=4, n_student_steps=2, z_dim=8, beta=0.0),
         "fast": dict(iterations=6, batch_size=4, n_student_steps=2, z_dim=8, warmup=1, n_generator_steps=2,
                      synthesis_lr=1e-3, z_lr=0.01)}


def _run(method, folder, **extra):
    torch.manual_seed(0)
    teacher, student = _Tiny(), _Tiny()
    images, labels = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    return zskt_fast.distill(teacher.eval(), student, image_shape=(1, 8, 8), method=method, out=folder,
                             test_data=(images, labels), eval_every=1, compile="off", amp="off", progress=False,
                             checkpoint_every=1, **SHORT[method], **extra)


@pytest.mark.parametrize("method", ["zskt", "fast"])
def test_a_run_tests_saves_and_resumes_the_average(method, tmp_path):
    plain = _run(method, tmp_path / "plain")
    whole = _run(method, tmp_path / "whole", student_ema=0.9)
    with pytest.raises(Killed):
        _run(method, tmp_path / "killed", student_ema=0.9, callbacks=[kill_after(4)])
    torch.manual_seed(0)
    teacher, student = _Tiny(), _Tiny()
    resumed = zskt_fast.distill(teacher.eval(), student, image_shape=(1, 8, 8), method=method,
                                out=tmp_path / "killed", resume=True, test_data=(torch.randn(12, 1, 8, 8),
                                                                                 torch.randint(0, 3, (12,))),
                                eval_every=1, compile="off", amp="off", progress=False, checkpoint_every=1,
                                student_ema=0.9, **SHORT[method])
    saved = torch.load(tmp_path / "whole" / "student.pt", weights_only=True)["state_dict"]
    resumed_saved = torch.load(tmp_path / "killed" / "student.pt", weights_only=True)["state_dict"]
    for key, value in saved.items():
        assert torch.equal(resumed_saved[key], value), key
        assert torch.equal(whole.student.state_dict()[key], value), key  # the network given ends as the average
    assert resumed.summary["student_acc"] == whole.summary["student_acc"]
    assert [h["student_acc"] for h in resumed.history] == [h["student_acc"] for h in whole.history]
    # The average reads the student and never steers it: the trained student (the last checkpoint's) is the plain
    # run's, and the average is another network.
    trained = {name: _live_student(tmp_path / name / "checkpoint.pt") for name in ("plain", "whole")}
    for key, value in trained["plain"].items():
        assert torch.equal(trained["whole"][key], value), key
    live = {k.split(".", 1)[1] if k not in saved else k: v for k, v in trained["whole"].items()}  # a wrapper's prefix
    assert set(live) == set(saved)
    assert any(not torch.equal(live[k], v) for k, v in saved.items() if v.is_floating_point())


def _live_student(checkpoint) -> dict:
    state = torch.load(checkpoint, weights_only=True)
    steps = state["steps"] if "steps" in state else state["pool_method"]["student_steps"]
    assert ("student_average" in steps) == ("whole" in str(checkpoint))
    return steps["student"]


# -- MAD's momentum generator (generator_ema) ------------------------------------------------------------------------

def test_the_student_learns_from_the_momentum_generators_images_too(float64_default):
    from zskt_fast.engine.settings.zero_shot import StepSettings
    from zskt_fast.models import Generator, pair_networks

    torch.manual_seed(0)
    teacher, student, generator = _Tiny().eval(), _Tiny(), Generator(8, 8, 1)
    teacher, student, _ = pair_networks(teacher, student, image_shape=(1, 8, 8), use_attention=False, num_classes=3)
    initial = {k: v.clone() for k, v in generator.state_dict().items()}
    steps = algorithm_one(teacher, student, generator, StepSettings(batch_size=4, z_dim=8, beta=0.0, amp="off",
                                                                    compile="off", generator_ema=0.9))
    z = steps.sample_noise()
    steps.generator_step(z)
    momentum = steps.momentum_generator.module
    d = min(0.9, 1 / WARMUP_STEPS)  # the first update's decay
    for key, value in generator.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(momentum.state_dict()[key], d * initial[key] + (1 - d) * value, rtol=1e-12,
                                       atol=1e-14, msg=key)
    images, teacher_out = steps.images_and_teacher(z)
    assert images.shape[0] == 8 and teacher_out.logits.shape[0] == 8
    with torch.no_grad():
        torch.testing.assert_close(images[:4], generator(z))
        torch.testing.assert_close(images[4:], momentum(z))
    loss, logits = steps.student_step(images, teacher_out)
    assert logits.shape[0] == 8 and torch.isfinite(loss)


def test_a_run_with_the_momentum_generator_resumes_bit_for_bit(tmp_path):
    whole = _run("zskt", tmp_path / "whole", generator_ema=0.9)
    with pytest.raises(Killed):
        _run("zskt", tmp_path / "killed", generator_ema=0.9, callbacks=[kill_after(4)])
    torch.manual_seed(0)
    teacher, student = _Tiny(), _Tiny()
    resumed = zskt_fast.distill(teacher.eval(), student, image_shape=(1, 8, 8), method="zskt",
                                out=tmp_path / "killed", resume=True, compile="off", amp="off", progress=False,
                                checkpoint_every=1, generator_ema=0.9, eval_every=1,
                                test_data=(torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))), **SHORT["zskt"])
    for name in ("student.pt", "generator.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "killed" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.summary["student_acc"] == whole.summary["student_acc"]
    plain = _run("zskt", tmp_path / "plain")
    assert plain.history != whole.history  # the momentum generator's images changed the training


def test_the_momentum_generator_is_refused_where_no_generator_trains_in_algorithm_1():
    with pytest.raises(ValueError, match="generator_ema \\(MAD's momentum generator\\) applies to the methods that "
                                         "train a generator inside Algorithm 1 \\(zskt, dfad, dafl, dfq\\), not to "
                                         "fast"):
        zskt_fast.distill(_Tiny(), _Tiny(), image_shape=(1, 8, 8), method="fast", generator_ema=0.9,
                          progress=False)
