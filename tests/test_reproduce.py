"""python -m zskt_fast.reproduce on a tiny configuration: every report file, every row, the same numbers in report.md
and results.json, and a second invocation that keeps every finished run."""
import json
import re

import pytest

from zskt_fast import reproduce

TINY = ["--seeds", "0", "1", "--shots", "1", "3", "--iterations", "2", "--fewshot-iterations", "3",
        "--scratch-epochs", "1", "--mte-images", "4", "--mte-steps", "3", "--compile", "off", "--no-progress"]


@pytest.fixture(scope="module")
def report(tmp_path_factory, teacher_cache):
    out = tmp_path_factory.mktemp("report")
    assert reproduce.main([*TINY, "--out", str(out)]) == 0
    return out


def test_the_report_holds_every_method_with_the_numbers_of_results_json(report):
    for name in ("report.md", "accuracy_vs_shots.png", "transition_curves.png", "results.json"):
        assert (report / name).is_file(), name
    results = json.loads((report / "results.json").read_text())
    assert [row["key"] for row in results["methods"]] == ["scratch", "zero-shot", "kd-at-1", "kd-at-3", "kd-at-all"]
    assert all(len(row["accuracies"]) == 2 for row in results["methods"])
    text = (report / "report.md").read_text()
    table = dict(re.findall(r"^\| ([^|]+?) \| [^|]+ \| ([0-9.]+ ± [0-9.]+) \|", text, re.M))
    for row in results["methods"]:
        assert table[row["method"]] == f"{row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f}", row["method"]
    assert f"| teacher (wrn-16-2) | all | {results['teacher_acc']:.2f} |" in text
    mte = dict(re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \| [0-9]+ \|$", text, re.M))
    assert [row["method"] for row in results["mte"]] == ["zero-shot", "KD+AT M=1", "KD+AT M=3", "KD+AT full data"]
    for row in results["mte"]:
        assert mte[row["method"]] == f"{row['mte']:.4f}"
    # the first seed's KD+AT students saw M images per class: 10 classes
    runs = report / "runs"
    assert json.loads((runs / "kd-at-3" / "seed0" / "summary.json").read_text())["images"] == 30


def test_a_second_invocation_keeps_every_finished_run(report, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was made again")

    for name in ("train", "train_kd_at", "train_supervised", "transition_curves"):
        monkeypatch.setattr(reproduce, name, must_not_run)
    assert reproduce.main([*TINY, "--out", str(report)]) == 0
    assert "(0 runs made, 14 kept from before)" in capsys.readouterr().out
    results = json.loads((report / "results.json").read_text())
    assert results["ran"] == [] and len(results["kept"]) == 14


@pytest.mark.parametrize("extra, message", [(["--shots", "0"], "shots must be an integer >= 1"),
                                            (["--seeds", "1", "1"], "take distinct values")])
def test_bad_options(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main([*TINY, *extra, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
