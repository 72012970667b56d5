"""What `amp auto` picks (bf16 where the CPU computes in bfloat16 natively, never guessed) and `compile auto` (compiled
steps for long CPU runs), what the run's header says of them, and a bf16 run on the CPU: it trains and resumes
exactly."""
import json
import math

import pytest
import torch

from zskt_fast import train as train_cli
from zskt_fast.engine.lifecycle import speed
from zskt_fast.engine.settings.config import ReproduceConfig, TrainConfig
from zskt_fast.engine.settings.zero_shot import StepSettings
from zskt_fast.engine.settings.parts import Context
from zskt_fast.engine.trainer import train

from conftest import Killed, kill_after

CPU = torch.device("cpu")


@pytest.fixture
def cpu_info(tmp_path, monkeypatch):
    """Writes a /proc/cpuinfo of our own (None: there is none) and makes the detection read it afresh."""
    def write(text):
        path = tmp_path / "cpuinfo"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
        monkeypatch.setattr(speed, "CPU_INFO", path)
        speed.native_bf16_flag.cache_clear()
    yield write
    speed.native_bf16_flag.cache_clear()


@pytest.mark.parametrize("text, flag", [
    ("processor : 0\nflags : fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n", "avx512_bf16"),
    ("processor : 0\nflags : fpu avx512f amx_tile amx_bf16 amx_int8 avx512_bf16\n", "amx_bf16"),
    ("processor : 0\nFeatures : fp asimd evtstrm aes sve bf16 i8mm\n", "bf16"),
    ("processor : 0\nflags : fpu sse2 avx2 avx512f avx512bw\n", None),  # AVX-512 without BF16: emulated, no gain
    ("model name : no flags line at all\n", None),
    (None, None),  # no /proc/cpuinfo (not Linux): not guessed
])
def test_native_bf16_is_read_from_the_cpu_features(cpu_info, text, flag):
    cpu_info(text)
    assert speed.native_bf16_flag() == flag
    assert speed.default_amp(CPU) == ("bf16" if flag else "off")
    reason = speed.amp_reason(CPU)
    assert (f"this CPU has {flag}" == reason) if flag else reason.startswith("this CPU has no native bf16")


@pytest.mark.parametrize("text, amp, channels_last", [("flags : avx512_bf16\n", "bf16", True), ("flags : avx2\n", "off",
                                                                                                   False)])
def test_amp_auto_follows_the_cpu_and_off_keeps_float32(cpu_info, text, amp, channels_last):
    cpu_info(text)
    steps = StepSettings().resolved(Context(device=CPU))
    assert (steps.amp, steps.channels_last, steps.cuda_graphs) == (amp, channels_last, False)
    assert StepSettings(amp="off").resolved(Context(device=CPU)).amp == "off"
    assert StepSettings(amp="bf16", channels_last=False).resolved(Context(device=CPU)).channels_last is False


@pytest.mark.parametrize("text, said", [("flags : avx512_bf16\n", "amp bf16 (auto: this CPU has avx512_bf16)"),
                                        ("flags : avx2\n", "amp off (auto: this CPU has no native bf16")])
def test_the_run_header_says_which_precision_and_why(cpu_info, text, said, tmp_path, teacher_cache, capsys):
    cpu_info(text)
    assert train_cli.main(["--iterations", "1", "--batch-size", "8", "--compile", "off", "--out", str(tmp_path),
                           "--no-progress", "--no-tensorboard"]) == 0
    assert said in capsys.readouterr().out
    assert json.loads((tmp_path / "seed0" / "config.json").read_text())["amp"] == said.split()[1]


@pytest.mark.parametrize("device, iterations, mode", [
    ("cpu", 800, "off"), ("cpu", speed.COMPILE_FROM_ITERATIONS - 1, "off"),
    ("cpu", speed.COMPILE_FROM_ITERATIONS, "default"), ("cpu", 80_000, "default"),
    ("cpu", None, "default"),  # a length not known: the paper's runs are long
    ("cuda", 80_000, "off"), ("cuda", 800, "off"),  # eager steps in CUDA graphs
])
def test_compile_auto_compiles_long_cpu_runs_only(device, iterations, mode):
    # one default, wherever the steps are built: distill's and directly built steps resolve as the trainer's
    context = Context(device=torch.device(device), iterations=iterations)
    assert StepSettings(amp="off", cuda_graphs=False).resolved(context).compile == mode
    assert speed.default_compile(torch.device(device), iterations) == mode
    reason = speed.compile_reason(torch.device(device), iterations)
    assert (f"{iterations} iterations, fewer than" in reason) == (device == "cpu" and mode == "off")


@pytest.mark.parametrize("dataset, mode", [("digits", "off"), ("cifar10", "default"), ("svhn", "default")])
def test_compile_auto_follows_the_data_sets_run_length(dataset, mode):
    assert TrainConfig.from_flat({"device": "cpu", "dataset": dataset}).resolved().steps.compile == mode
    # the paper's comparison runs the zero-shot method with the steps it resolved
    assert ReproduceConfig.from_flat({"device": "cpu", "dataset": dataset}).resolved().steps.compile == mode
    assert TrainConfig.from_flat({"device": "cpu", "dataset": dataset, "iterations": 10}).resolved().steps.compile \
        == "off"


NATIVE_BF16 = pytest.mark.skipif(
    speed.native_bf16_flag() is None,
    reason="the faulty bf16 weight gradient was seen in oneDNN's native bf16 kernels; this CPU has no native bf16, and "
           "its emulated bf16 gradient is sound (the refusal itself is tested with the probe reporting a fault)")


@NATIVE_BF16
@pytest.mark.parametrize("side, faulty", [(16, True), (32, False)])
def test_bf16_on_the_cpu_refuses_a_student_whose_weight_gradient_pytorch_gets_wrong(side, faulty):
    """ResNet-18 on 16x16 images runs layer4.0.conv1 (3x3, stride 2) on a 1x1 map, where PyTorch's bf16 weight
    gradient on a CPU with native bf16 reads uninitialised memory; on 32x32 images its maps stay large enough."""
    torchvision = pytest.importorskip("torchvision")
    student = torchvision.models.resnet18(num_classes=2)
    if faulty:
        with pytest.raises(ValueError, match=r"amp bf16 on the CPU cannot train .* layer4\.0\.conv1 \(input 1x1\).*"
                                             r"--amp off"):
            speed.check_cpu_bf16_training(student, (3, side, side), "bf16", CPU)
    else:
        speed.check_cpu_bf16_training(student, (3, side, side), "bf16", CPU)
    speed.check_cpu_bf16_training(student, (3, side, side), "off", CPU)  # float32 is sound


def _faulty_on_one_pixel(monkeypatch):
    """The probe reports the fault for the convolutions on 1x1 maps, as it does on CPUs whose kernel has it."""
    monkeypatch.setattr(speed, "_bf16_weight_gradient_is_sound", lambda conv, shape: shape[-1] > 1)


def test_a_student_whose_probe_fails_is_refused_with_the_layer_named(monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    _faulty_on_one_pixel(monkeypatch)
    student = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ValueError, match=r"amp bf16 on the CPU cannot train this student on 3x16x16 images: .* "
                                         r"layer4\.0\.conv1 \(input 1x1\).*--amp off"):
        speed.check_cpu_bf16_training(student, (3, 16, 16), "bf16", CPU)
    speed.check_cpu_bf16_training(student, (3, 32, 32), "bf16", CPU)  # no map of one pixel
    speed.check_cpu_bf16_training(student, (3, 16, 16), "off", CPU)  # float32 is not probed


def test_distill_checks_the_student_before_a_run_starts(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    from zskt_fast import distill
    _faulty_on_one_pixel(monkeypatch)
    teacher, student = torchvision.models.resnet18(num_classes=2), torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ValueError, match="amp bf16 on the CPU cannot train"):
        distill(teacher, student, image_shape=(3, 16, 16), iterations=1, batch_size=4, amp="bf16", device="cpu",
                out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _config(**overrides):
    values = dict(iterations=8, batch_size=16, eval_every=4, log_every=1, checkpoint_every=2, tensorboard=False,
                  compile="off", amp="bf16", channels_last=True)
    return TrainConfig.from_flat({**values, **overrides})


def _records(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds_per_iteration"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_bf16_cpu_run_trains_and_resumes_exactly(tmp_path, teacher_cache):
    whole = train(_config(), tmp_path / "whole", progress=False)
    records = _records(tmp_path / "whole")
    losses = [r["loss_student"] for r in records]
    assert all(math.isfinite(r["loss_student"]) and math.isfinite(r["loss_generator"]) for r in records)
    # the student learns to agree with the teacher: its loss falls over the first iterations (later the generator,
    # finding new disagreements, pushes it back up: the game, not a divergence)
    assert max(losses[1:4]) < losses[0]
    assert whole["amp"] == "bf16" and json.loads((tmp_path / "whole" / "config.json").read_text())["amp"] == "bf16"
    with pytest.raises(Killed):
        train(_config(), tmp_path / "cut", progress=False, callbacks=[kill_after(5)])
    train(None, tmp_path / "cut", resume=True, progress=False)
    assert _records(tmp_path / "cut") == records
    for name in ("student.pt", "generator.pt"):
        a, b = (torch.load(tmp_path / run / name, weights_only=True)["state_dict"] for run in ("whole", "cut"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
