"""zskt_fast.distill, the one training path: the Python API on any networks, and the command line with torchvision
architectures, image folders and their errors."""
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import zskt_fast
from zskt_fast import mte, pretrain
from zskt_fast import train as train_cli
from zskt_fast.engine.lifecycle.checkpoint import load_weights
from zskt_fast.models import build_classifier

from conftest import Killed, kill_after, skip_unless_runnable

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = dict(iterations=2, batch_size=4, n_student_steps=2, compile="off", progress=False)


class Tiny(nn.Module):
    """A user's classifier that returns logits only."""

    def __init__(self, num_classes=3, width=8):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.stage2(self.stage1(x)).mean((2, 3)))


def _nets(seed=0, **kwargs):
    torch.manual_seed(seed)
    return Tiny(**kwargs), Tiny(**kwargs)


def test_distill_user_modules_in_memory():
    teacher, student = _nets()
    images, labels = torch.randn(12, 3, 16, 16), torch.randint(0, 3, (12,))
    before = [p.detach().clone() for p in student.parameters()]
    result = zskt_fast.distill(teacher, student, image_shape=(3, 16, 16), test_data=(images, labels), eval_every=1,
                               beta=0.0, **QUICK)
    assert result.student is student and result.run_dir is None
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert [h["iteration"] for h in result.history] == [1, 2]
    assert result.summary["student"] == "Tiny" and result.summary["attention_pairs"] == []
    assert 0 <= result.student_acc <= 100 and result.teacher_acc == result.summary["teacher_acc"]
    assert result.generator(torch.randn(2, 100)).shape == (2, 3, 16, 16)


def test_distill_pairs_user_modules_and_writes_a_resumable_run(tmp_path):
    teacher, student = _nets()
    whole = zskt_fast.distill(teacher, student, image_shape=(3, 16, 16), out=tmp_path / "whole",
                              **QUICK | {"iterations": 4})
    assert whole.summary["attention_pairs"] == [("stage1", "stage1"), ("stage2", "stage2")]
    files = {p.name for p in (tmp_path / "whole").iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.jsonl", "student.pt", "generator.pt", "summary.json"} <= files
    saved = Tiny()
    load_weights(saved, tmp_path / "whole" / "student.pt")  # the plain network's keys, loadable as they are
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), student.state_dict().values()))

    teacher, student = _nets()
    with pytest.raises(Killed):
        zskt_fast.distill(teacher, student, image_shape=(3, 16, 16), out=tmp_path / "cut", callbacks=[kill_after(3)],
                          checkpoint_every=1, **QUICK | {"iterations": 4})
    teacher, _ = _nets()
    _, student = _nets(seed=5)  # other initial student weights: the checkpoint's replace them
    zskt_fast.distill(teacher, student, image_shape=(3, 16, 16), out=tmp_path / "cut", resume=True,
                      checkpoint_every=1, **QUICK | {"iterations": 4})
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), student.state_dict().values()))
    with pytest.raises(ValueError, match="do not belong together: they differ in batch_size"):
        zskt_fast.distill(*_nets(), image_shape=(3, 16, 16), out=tmp_path / "cut", resume=True,
                          **QUICK | {"iterations": 4, "batch_size": 8})


@pytest.mark.parametrize("call, message", [
    (dict(image_shape=(3, 16, 16), learning_rate=0.1), r"unknown setting\(s\) learning_rate: distill takes "),
    (dict(image_shape=(3, 16, 18)), r"square images with a side divisible by 4"),
    (dict(image_shape=(16, 16)), r"image_shape must be \(channels, height, width\)"),
    (dict(image_shape=(3, 16, 16), num_classes=10), r"predict 3 classes, and num_classes is 10"),
    (dict(image_shape=(3, 16, 16), resume=True), r"resume needs the run folder"),
    (dict(image_shape=(3, 16, 16), test_data=42), r"test data: expected a DataLoader"),
])
def test_distill_refuses_bad_calls(call, message):
    with pytest.raises(ValueError, match=message):
        zskt_fast.distill(*_nets(), **call, **QUICK)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Your own networks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "student.pth").is_file() and (tmp_path / "runs" / "my-distillation" / "summary.json").is_file()


# -- the command line: torchvision networks on an image folder --------------------------------------------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of 16x16 RGB images (bright and dark), train/ and test/ splits."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("test", 4)):
        for label, base in (("bright", 180), ("dark", 40)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (base + torch.randint(-30, 30, (16, 16, 3), generator=generator)).clamp(0, 255)
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_teacher(image_folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "resnet18.pt"
    assert pretrain.main(["--dataset", "folder", "--data-root", str(image_folder), "--image-size", "16", "--arch",
                          "tv:resnet18", "--epochs", "1", "--batch-size", "8", "--out", str(path),
                          "--no-progress", "--device", "cpu"]) == 0
    return path


def _folder_args(image_folder, out, *extra):
    # float32: at 16x16 the torchvision networks' maps shrink to a pixel, where PyTorch's bf16 CPU kernels are faulty
    # (test_speed.py); what these tests check does not depend on the precision
    return ["--dataset", "folder", "--data-root", str(image_folder), "--image-size", "16", "--iterations", "2",
            "--batch-size", "4", "--n-student-steps", "2", "--compile", "off", "--amp", "off", "--no-progress",
            "--out", str(out), *extra]


def test_cli_torchvision_networks_on_an_image_folder_and_their_transition_curves(image_folder, folder_teacher,
                                                                                 tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(_folder_args(image_folder, out, "--teacher", "tv:resnet18", "--teacher-ckpt",
                                       str(folder_teacher), "--student", "tv:mobilenet_v3_small")) == 0
    summary = json.loads((out / "seed0" / "summary.json").read_text())
    assert summary["teacher"] == "tv:resnet18" and summary["student"] == "tv:mobilenet_v3_small"
    assert summary["attention_pairs"] == [["layer1", "features.1"], ["layer2", "features.3"]]  # 4x4, 2x2 maps
    config = json.loads((out / "seed0" / "config.json").read_text())
    assert config["num_classes"] == 2 and config["image_size"] == 16 and config["channels"] == 3
    student = build_classifier("tv:mobilenet_v3_small", num_classes=2)
    assert load_weights(student, out / "seed0" / "student.pt")["arch"] == "tv:mobilenet_v3_small"
    capsys.readouterr()
    assert mte.main(["--run", str(out / "seed0"), "--n-images", "4", "--steps", "3", "--no-progress"]) == 0
    assert "zero-shot tv:mobilenet_v3_small" in capsys.readouterr().out
    assert (out / "seed0" / "mte" / "mte.json").is_file()


def test_cli_explicit_attention_layers_and_list_nodes(image_folder, folder_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(_folder_args(image_folder, out, "--teacher", "tv:resnet18", "--teacher-ckpt",
                                       str(folder_teacher), "--student", "tv:resnet18",
                                       "--attention-layers", "layer2:layer2")) == 0
    assert json.loads((out / "seed0" / "summary.json").read_text())["attention_pairs"] == [["layer2", "layer2"]]
    capsys.readouterr()
    assert train_cli.main(["--list-nodes", "tv:resnet18", "--dataset", "cifar10"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"layer2 +128x4x4 +block, automatic candidate for 4x4 maps", listing)


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "tv:resnet5"], r"unknown torchvision classifier tv:resnet5: did you mean tv:resnet50"),
    (["--attention-layers", "layer9:features.3"], r"the teacher \(tv:resnet18\) has no node 'layer9'"),
    (["--attention-layers", "layer1:features.3"], r"the teacher's map is 64x4x4 and the student's 24x2x2"),
    (["--num-classes", "10"], r"num_classes is 10, and the folder data set has 2 classes"),
    (["--student", "tv:mobilenet_v3_small", "--teacher", "tv:mobilenet_v3_small"],
     r"does not fit the teacher \(tv:mobilenet_v3_small\): missing keys: features.0.0.weight"),
])
def test_cli_bad_networks_are_refused_before_anything_is_written(image_folder, folder_teacher, tmp_path, capsys,
                                                                 extra, message):
    out = tmp_path / "run"
    args = ["--teacher", "tv:resnet18", "--teacher-ckpt", str(folder_teacher), "--student", "tv:mobilenet_v3_small"]
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(_folder_args(image_folder, out, *args, *extra))
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("switches", [dict(backend="cpu", channels_last=True), dict(backend="eager", amp="bf16"),
                                      dict(backend="triton", amp="off")])
def test_distill_torchvision_networks_with_the_speed_switches(switches):
    skip_unless_runnable(switches["backend"], "cpu")
    torch.manual_seed(0)
    teacher, student = build_classifier("tv:resnet18"), build_classifier("tv:mobilenet_v3_small")
    before = [p.detach().clone() for p in student.parameters()]
    result = zskt_fast.distill(teacher, student, image_shape=(3, 32, 32), **QUICK, **switches)
    assert result.summary["backend"] == switches["backend"] and len(result.summary["attention_pairs"]) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(torch.isfinite(p).all() for p in student.parameters())
