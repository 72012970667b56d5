"""python -m zskt_fast.toy: the 2-D demonstration writes its figures and its student agrees with the teacher."""
import json

import pytest
import torch

from zskt_fast import toy
from zskt_fast.models.mlp import MLPClassifier, MLPGenerator


def test_short_toy_run_writes_its_files_and_the_student_beats_chance(tmp_path, capsys):
    assert toy.main(["--iterations", "150", "--snapshots", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("toy.png", "toy.gif", "agreement.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "agreement.json").read_text())
    assert summary["teacher_accuracy_on_data"] > 0.9
    assert summary["agreement_on_data"] > 0.7  # chance is 1/3
    assert [s["iteration"] for s in summary["snapshots"]] == [0, 75, 150]
    assert summary["snapshots"][0]["data_agreement"] < summary["agreement_on_data"]  # it learnt
    from PIL import Image
    with Image.open(tmp_path / "toy.gif") as gif:
        assert gif.n_frames == 3
    assert "student agrees with the teacher" in capsys.readouterr().out


def test_spirals_and_mlps():
    points, labels = toy.make_spirals(4, 50, seed=1)
    assert points.shape == (200, 2) and labels.bincount().tolist() == [50] * 4
    assert torch.equal(points, toy.make_spirals(4, 50, seed=1)[0])
    logits, feats = MLPClassifier(num_classes=4)(points)
    assert logits.shape == (200, 4) and feats == []
    assert MLPGenerator(z_dim=8)(torch.randn(16, 8)).shape == (16, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        toy.make_spirals(1)


@pytest.mark.parametrize("argv, message", [(["--classes", "1"], "--classes must be an integer between 2 and 10"),
                                           (["--iterations", "0"], "--iterations must be an integer >= 1")])
def test_toy_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        toy.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
