"""python -m zskt_fast.pretrain: writes a teacher the trainer loads, reports accuracy, rejects bad values."""
import pytest

from zskt_fast import pretrain
from zskt_fast.engine.lifecycle.checkpoint import load_weights
from zskt_fast.engine.settings.config import PretrainConfig
from zskt_fast.engine.experiments.supervised import learning_rate
from zskt_fast.models import build_classifier


def test_pretrain_writes_a_loadable_teacher(tmp_path, capsys):
    out = tmp_path / "teacher.pt"
    assert pretrain.main(["--arch", "wrn-16-1", "--epochs", "3", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out) in printed
    net = build_classifier("wrn-16-1", in_channels=1)
    meta = load_weights(net, out)
    assert meta["arch"] == "wrn-16-1" and meta["dataset"] == "digits" and meta["epochs"] == 3
    assert meta["test_acc"] > 50  # three epochs on digits, chance is 10%


def test_pretrain_default_output_is_the_trainers_cache(tmp_path, monkeypatch):
    from zskt_fast.engine.teachers import default_teacher_path
    monkeypatch.setenv("ZSKT_FAST_CACHE", str(tmp_path))
    assert default_teacher_path("cifar10", "WRN-40-2") == tmp_path / "teachers" / "cifar10-wrn-40-2.pt"


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--lr", "-0.1"], "lr must be a finite number > 0"),
    (["--arch", "alexnet"], "unknown architecture 'alexnet'"),
    (["--dataset", "svhn", "--data-root", "/nonexistent"], "svhn not found: looked for /nonexistent/train_32x32.mat"),
])
def test_pretrain_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(argv + ["--out", str(tmp_path / "t.pt"), "--no-progress"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_schedules():
    cosine = PretrainConfig.from_flat({"epochs": 1, "lr": 0.1})
    assert learning_rate(cosine, 0, 100) == 0.1 and learning_rate(cosine, 50, 100) == pytest.approx(0.05)
    step = PretrainConfig.from_flat({"epochs": 1, "lr": 0.1, "schedule": "step"})
    assert [round(learning_rate(step, s, 10), 6) for s in (0, 3, 6, 8)] == [0.1, 0.02, 0.004, 0.0008]
