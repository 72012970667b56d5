"""python -m zskt_fast.reproduce on a tiny configuration: every report file, every row, the same numbers in report.md
and results.json, and a second invocation that keeps every finished run."""
import json
import re

import pytest

from zskt_fast import reproduce

TINY = ["--seeds", "0", "1", "--shots", "1", "3", "--iterations", "2", "--fewshot-iterations", "3",
        "--scratch-epochs", "1", "--mte-images", "4", "--mte-steps", "3", "--compile", "off", "--no-progress",
        "--methods", "zskt", "dfq", "--methods-eval-every", "1"]


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
    assert "(0 runs made, 18 kept from before)" in capsys.readouterr().out
    results = json.loads((report / "results.json").read_text())
    assert results["ran"] == [] and len(results["kept"]) == 18


def test_the_methods_section_is_in_the_report_with_the_numbers_of_methods_json(report):
    for name in ("methods.md", "methods.json", "accuracy_vs_seconds.png"):
        assert (report / name).is_file(), name
    section = json.loads((report / "methods.json").read_text())
    assert [row["method"] for row in section["rows"]] == ["zskt", "dfq"] and section["reference"] == "zskt"
    text = (report / "report.md").read_text()
    assert "## Data-free methods: time to a good student" in text and "accuracy_vs_seconds.png" in text
    for row in section["rows"]:
        assert f"| {row['method']} | {row['length']} | {row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f} |" in text
        assert row["seconds_per_iteration"] > 0 and len(row["seconds_to_target"]) == 2
    assert len(section["curves"]["dfq"]["seconds"]) == 2  # an evaluation every iteration of 2
    dfq = json.loads((report / "runs" / "methods" / "dfq" / "seed1" / "config.json").read_text())
    assert dfq["method"] == "dfq" and dfq["n_student_steps"] == 10 and dfq["bn_prior"] == 1.0


def test_methods_only_runs_just_that_part(tmp_path, teacher_cache, capsys):
    argv = ["--seeds", "0", "--iterations", "2", "--methods", "dfad", "dafl", "--methods-eval-every", "1",
            "--compile", "off", "--no-progress", "--methods-only", "--out", str(tmp_path)]
    assert reproduce.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["methods"]
    assert sorted(p.name for p in (tmp_path / "runs" / "methods").iterdir()) == ["dafl", "dfad"]
    assert not (tmp_path / "report.md").exists() and (tmp_path / "methods.md").is_file()
    assert "| dfad |" in capsys.readouterr().out


def test_time_to_accuracy_of_synthetic_runs():
    from zskt_fast.engine.experiments.time_to_accuracy import (accuracy_at, methods_table, seconds_to_reach,
                                                               summarise_methods)

    def run(seed, points, seconds):
        return {"seed": seed, "student_acc": points[-1][1], "seconds": seconds, "iterations": 100,
                "history": [{"iteration": i, "student_acc": a, "seconds": s} for i, (s, a) in
                            enumerate(points, start=1)]}

    zskt = [run(0, [(10, 50.0), (20, 80.0), (30, 90.0)], 30), run(1, [(10, 60.0), (20, 85.0), (30, 92.0)], 30)]
    fast = [run(0, [(5, 91.0), (10, 95.0)], 10), run(1, [(5, 80.0), (10, 89.0)], 10)]
    assert seconds_to_reach(fast[0]["history"], 91.0) == 5 and seconds_to_reach(fast[1]["history"], 91.0) is None
    assert accuracy_at(zskt[0]["history"], 25) == 80.0 and accuracy_at(zskt[0]["history"], 1) == 50.0
    section = summarise_methods({"zskt": zskt, "fast": fast})
    assert section["target"] == 91.0 and section["reference_seconds"] == 30
    rows = {row["method"]: row for row in section["rows"]}
    assert rows["zskt"]["seconds_to_target"] == [None, 30] and rows["zskt"]["seconds_to_target_mean"] is None
    assert rows["fast"]["reached"] == 1 and rows["fast"]["accuracy_at_reference_time_mean"] == 92.0
    assert section["curves"]["fast"]["accuracy_mean"] == [85.5, 92.0]
    dfq = [run(0, [(15, 92.0)], 15), run(1, [(15, 91.5)], 15)]
    table = "\n".join(methods_table(summarise_methods({"zskt": zskt, "dfq": dfq})))
    assert "| dfq | 100 iterations | 91.75 ± 0.25 | 15 (15, 15) | 50% |" in table


@pytest.mark.parametrize("extra, message", [(["--shots", "0"], "shots must be an integer >= 1"),
                                            (["--seeds", "1", "1"], "take distinct values"),
                                            (["--methods", "mad"], "methods must be one of zskt, dfad, dafl, dfq")])
def test_bad_options(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main([*TINY, *extra, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
