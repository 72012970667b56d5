"""The run lifecycle (engine/lifecycle/run.py) on a loop of its own: folder, lock, checkpoints, signals, metrics guard,
resume and summary, the same for every trainer that uses it."""
import json
import os
import signal

import pytest
import torch

from zskt_fast.engine.lifecycle.checkpoint import CheckpointError
from zskt_fast.engine.lifecycle.run import Run, RunFolderError, RunInterrupted, hold_folder
from zskt_fast.engine.settings.parts import OutputSettings

FILES = ("config.json", "checkpoint.pt", "metrics.jsonl", "summary.json")


def _run(folder, total=6, every=2, resume=False, overwrite=False, record=None, minutes=5.0):
    outputs = OutputSettings(eval_every=3, log_every=1, checkpoint_minutes=minutes, checkpoint_every=every,
                             tensorboard=False)
    return Run(folder, name="counting", unit="iteration", total=total, files=FILES, folders=("images",),
               record=record or {"lr": 0.1}, resume=resume, overwrite=overwrite, outputs=outputs, progress=False,
               advice="Count slower.")


def _count(run, stop_at=None, value=lambda done: float(done)):
    """A trainer whose state is a counter; `stop_at`: a signal arrives during that iteration."""
    counter = {"sum": torch.tensor(float(run.state["sum"]) if run.state else 0.0)}
    with run:
        for done in range(run.start + 1, run.total + 1):
            counter["sum"] += done
            if done == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            run.log(done, {"loss": value(done)}, check=("loss",))
            if done % 3 == 0:
                run.evaluated(done, float(done))
            run.iteration_done(done, lambda: {"sum": counter["sum"].clone()})
        run.checkpoint(run.total, {"sum": counter["sum"].clone()})
        return run.finish({"sum": counter["sum"].item()})


def _accuracies(history):
    """The history without its wall-clock seconds."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_a_run_writes_its_folder_checkpoints_and_summary(tmp_path):
    summary = _count(_run(tmp_path / "run"))
    folder = tmp_path / "run"
    assert summary["sum"] == 21 and summary["iterations_per_second"] > 0
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert json.loads((folder / "config.json").read_text()) == {"lr": 0.1}
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6] and "seconds_per_iteration" in records[0]
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 6 and state["sum"].item() == 21 and state["config"] == {"lr": 0.1}
    assert _accuracies(state["history"]) == [{"iteration": 3, "student_acc": 3.0}, {"iteration": 6, "student_acc": 6.0}]
    assert 0 < state["history"][0]["seconds"] <= state["history"][1]["seconds"]  # wall clock at each evaluation


def test_a_folder_holding_a_run_is_refused_and_overwrite_clears_it(tmp_path):
    folder = tmp_path / "run"
    _count(_run(folder))
    (folder / "images").mkdir()
    (folder / "images" / "old.png").write_text("")
    with pytest.raises(RunFolderError, match="already holds a run"):
        _run(folder)
    run = _run(folder, total=2, overwrite=True)
    with run:
        assert not (folder / "summary.json").exists() and not (folder / "images").exists()
    with hold_folder(folder), pytest.raises(RunFolderError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
        with _run(folder, total=2, overwrite=True):
            pass


def test_a_signal_checkpoints_and_stops_and_the_run_resumes_to_the_same_end(tmp_path):
    whole = _count(_run(tmp_path / "whole", every=0))
    with pytest.raises(RunInterrupted, match="after iteration 4") as stopped:
        _count(_run(tmp_path / "cut", every=0), stop_at=4)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.run_dir == tmp_path / "cut"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4 and state["sum"].item() == 10 and _accuracies(state["history"]) == [
        {"iteration": 3, "student_acc": 3.0}]
    resumed_run = _run(tmp_path / "cut", every=0, resume=True)
    assert resumed_run.start == 4 and resumed_run.history == state["history"]
    resumed = _count(resumed_run)
    assert resumed["sum"] == whole["sum"]
    records = [json.loads(line)["iteration"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert records == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_is_due_by_the_clock(tmp_path):
    """Every iteration ends past a (tiny) interval: each writes a checkpoint, the last one at the iteration killed."""
    run = _run(tmp_path / "run2", every=0, minutes=1e-9, total=6)
    with pytest.raises(RuntimeError, match="stop here"):
        with run:
            for done in range(1, 6):
                run.iteration_done(done, lambda: {"sum": torch.tensor(0.0)})
            raise RuntimeError("stop here")
    assert torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)["iteration"] == 5


def test_a_non_finite_loss_ends_the_run_before_it_is_logged(tmp_path):
    with pytest.raises(FloatingPointError, match=r"counting diverged: non-finite loss by iteration 3 \(loss nan\); "
                                                 r"the last checkpoint in .* predates it. Count slower."):
        _count(_run(tmp_path / "run"), value=lambda done: float("nan") if done == 3 else 1.0)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2]


def test_resume_checks_the_checkpoint(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(CheckpointError, match="does not exist"):
        _run(folder, resume=True)
    _count(_run(folder))
    with pytest.raises(CheckpointError, match="do not belong together: they differ in lr"):
        _run(folder, resume=True, record={"lr": 0.2})
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    state["student"] = {"fc.weight": torch.tensor([1.0, float("inf")])}
    torch.save(state, folder / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"\(student\): fc.weight holds NaN or infinite values"):
        _run(folder, resume=True)
    with pytest.raises(ValueError, match="resume needs the run folder"):
        _run(None, resume=True)


def test_a_run_without_a_folder_writes_nothing_and_leaves_signals_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run(None)
    with run:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        for done in range(1, 7):
            run.log(done, {"loss": 1.0}, check=("loss",))
            run.iteration_done(done, dict)
        run.checkpoint(6, {})
        assert run.finish({})["iterations_per_second"] > 0
    assert list(tmp_path.iterdir()) == []
