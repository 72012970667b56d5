"""Checkpoint files: atomic writes, the released teachers' layout, clear errors for files that do not fit."""
import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import zskt_fast
from zskt_fast.engine.lifecycle.checkpoint import CheckpointError, atomic_save, load_file, load_weights, save_classifier
from zskt_fast.engine.settings.config import ZeroShotSettings
from zskt_fast.models import build_classifier


def _randomised(net):
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return net


def test_released_teacher_layout_loads_as_it_is(tmp_path):
    # The authors' files: a dict with an argparse namespace, the epoch, the optimiser and 'state_dict'.
    source = _randomised(build_classifier("wrn-16-2"))
    path = tmp_path / "last.pth.tar"
    torch.save({"args": argparse.Namespace(dataset="CIFAR10", lr=0.1), "epoch": 200, "test_acc": 0.94,
                "state_dict": source.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, path)
    target = build_classifier("wrn-16-2")
    meta = load_weights(target, path)
    assert meta["epoch"] == 200
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize("layout", ["plain", "data-parallel", "ours"])
def test_other_layouts_load(tmp_path, layout):
    source = _randomised(build_classifier("wrn-16-1", in_channels=1))
    path = tmp_path / "weights.pt"
    if layout == "plain":
        torch.save(source.state_dict(), path)
    elif layout == "data-parallel":
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    else:
        save_classifier(source, path, arch="wrn-16-1", test_acc=50.0)
    target = build_classifier("wrn-16-1", in_channels=1)
    load_weights(target, path)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_wrong_architecture_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    path = tmp_path / "wrn40.pt"
    torch.save({"state_dict": build_classifier("wrn-40-2").state_dict()}, path)
    with pytest.raises(CheckpointError) as error:
        load_weights(build_classifier("wrn-16-2"), path, what="teacher")
    message = str(error.value)
    assert "does not fit the teacher (wrn-16-2)" in message
    assert "unexpected keys: block1.layer.2" in message and "missing keys: none" in message
    path = tmp_path / "wide.pt"
    torch.save(build_classifier("wrn-16-1").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatches .*block1.layer.0.conv1.weight \(16, 16, 3, 3\) vs "
                                              r"\(32, 16, 3, 3\)"):
        load_weights(build_classifier("wrn-16-2"), path)


def test_nan_missing_and_unreadable_files(tmp_path):
    net = build_classifier("wrn-16-1")
    state = net.state_dict()
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="fc.weight holds NaN"):
        load_weights(build_classifier("wrn-16-1"), tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(net, tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_file(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="holds no weights where they are looked for"):
        load_weights(net, tmp_path / "nostate.pt")


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"x": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"x": Unpicklable()}, path)
    assert torch.equal(load_file(path)["x"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def _authors_zero_shot_file(path, student, generator):
    """A last.pth.tar of the authors' zero-shot runs: the student under 'student_state_dict', the generator inside
    their loader ('generator.' prefix) as one Sequential 'layers' (layers.1 is a parameter-free reshape)."""
    def their_name(key):
        part, rest = key.split(".", 1)
        if part == "project":
            return f"generator.layers.0.{rest}"
        index, rest = rest.split(".", 1)
        return f"generator.layers.{int(index) + 2}.{rest}"

    torch.save({"args": argparse.Namespace(dataset="CIFAR10", n_student_iter=10), "n_pseudo_batches": 80000,
                "generator_state_dict": {their_name(k): v for k, v in generator.state_dict().items()},
                "student_state_dict": student.state_dict(),
                "optimizer_generator": {"state": {}, "param_groups": []},
                "optimizer_student": {"state": {}, "param_groups": []},
                "scheduler_generator": {"last_epoch": 80000}, "scheduler_student": {"last_epoch": 80000},
                "test_acc": 0.83}, path)


def test_the_authors_zero_shot_run_file_loads_student_and_generator(tmp_path):
    from zskt_fast.engine.lifecycle.checkpoint import load_classifier, load_generator
    from zskt_fast.models import Generator

    student = _randomised(build_classifier("wrn-16-1"))
    generator = _randomised(Generator(z_dim=100, image_size=32, channels=3))
    for norm in generator.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_var.abs_()
    path = tmp_path / "last.pth.tar"
    _authors_zero_shot_file(path, student, generator)
    loaded = load_classifier(path, "wrn-16-1", num_classes=10, in_channels=3)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in student.state_dict().items())
    rebuilt = load_generator(path)
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in generator.state_dict().items())
    z = torch.randn(4, 100)
    torch.testing.assert_close(rebuilt.eval()(z), generator.eval()(z))
    with pytest.raises(CheckpointError, match=r"does not fit the generator.*shape mismatches.*project.weight"):
        load_generator(path, Generator(z_dim=64, image_size=32, channels=3))


def test_our_generator_file_loads(tmp_path):
    from zskt_fast.engine.lifecycle.checkpoint import load_generator
    from zskt_fast.models import Generator

    generator = _randomised(Generator(z_dim=16, image_size=8, channels=1))
    atomic_save({"state_dict": generator.state_dict(), "z_dim": 16, "image_size": 8, "channels": 1},
                tmp_path / "generator.pt")
    rebuilt = load_generator(tmp_path / "generator.pt")
    assert rebuilt.z_dim == 16 and all(torch.equal(rebuilt.state_dict()[k], v)
                                        for k, v in generator.state_dict().items())


# -- a checkpoint written by the previous engine (db0d6c2) resumes to what an uninterrupted run of it ends with --------

FIXTURE = Path(__file__).resolve().parent / "data" / "resume_db0d6c2"


class Tiny(nn.Module):  # the class name is recorded in the fixture's config.json
    """The networks of tests/data/resume_db0d6c2 (made by a distill run of db0d6c2, killed after its first
    checkpoint; the student an uninterrupted run of it ended with beside it)."""

    def __init__(self, width=8, classes=3):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
                                    nn.ReLU())
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.stage2(self.stage1(x)).mean((2, 3)))


def _fixture_networks():
    torch.manual_seed(0)
    teacher, student = Tiny(), Tiny()
    with torch.no_grad():
        teacher.train()
        teacher(torch.randn(32, 1, 8, 8) * 2 + 0.5)
    return teacher.eval(), student


@pytest.mark.parametrize("method", ["zskt", "fast"])
def test_a_checkpoint_of_the_previous_engine_resumes_bit_for_bit(method, tmp_path):
    folder = tmp_path / method
    shutil.copytree(FIXTURE / method, folder)
    settings = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
                if k in ZeroShotSettings.setting_names()}
    teacher, student = _fixture_networks()
    result = zskt_fast.distill(teacher, student, image_shape=(1, 8, 8), out=folder, resume=True,
                               **{**settings, "progress": False})
    expected = torch.load(FIXTURE / f"{method}-student.pt", weights_only=True)
    assert result.summary["iterations"] == 4 and (folder / "student.pt").is_file()
    for key, value in expected.items():
        assert torch.equal(result.student.state_dict()[key], value), key
