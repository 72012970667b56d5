"""Nothing lost, nothing silently wrong: run folders are protected and locked, resume is exact wherever the checkpoint
falls, signals leave a checkpoint, every program ends bad input with a one-line error, divergence is caught."""
import errno
import json
import os
import signal

import pytest
import torch

from zskt_fast import mte, pretrain, toy
from zskt_fast import train as train_cli
from zskt_fast.engine.methods import generator_strategy
from zskt_fast.common import StorageError
from zskt_fast.engine.lifecycle.checkpoint import CheckpointError, atomic_save, load_file
from zskt_fast.engine.settings.config import TrainConfig
from zskt_fast.engine.lifecycle.run import RunFolderError, hold_folder
from zskt_fast.engine.trainer import train

from conftest import Killed, kill_after


def _config(**overrides):
    # Eager steps: compiling costs about a minute per run (compiled steps have their own tests in test_train.py).
    values = dict(iterations=6, batch_size=16, eval_every=3, log_every=3, checkpoint_every=2, tensorboard=False,
                  compile="off")
    values.update(overrides)
    return TrainConfig.from_flat(values)


def _killed(config, folder, after):
    """Runs `config` into `folder` until a kill after `after` iterations."""
    with pytest.raises(Killed):
        train(config, folder, progress=False, callbacks=[kill_after(after)])


def _records(path):
    """The metrics log without its wall-clock field."""
    return [{k: v for k, v in r.items() if k != "seconds_per_iteration"}
            for r in map(json.loads, path.read_text().splitlines())]


def _weights(folder):
    return {name: torch.load(folder / name, weights_only=True)["state_dict"] for name in ("student.pt", "generator.pt")}


def _assert_same_run(a, b):
    assert _records(a / "metrics.jsonl") == _records(b / "metrics.jsonl")
    wa, wb = _weights(a), _weights(b)
    for name in wa:
        assert all(torch.equal(wa[name][k], wb[name][k]) for k in wa[name]), name


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(argv)
    return exit_info.value.code, capsys.readouterr().err


# -- 1. run folders --------------------------------------------------------------------------------------------------

def test_a_folder_holding_a_run_is_refused_unless_overwritten(tmp_path, teacher_cache, capsys):
    folder = tmp_path / "run"
    train(_config(iterations=2, eval_every=2), folder, progress=False)
    with pytest.raises(RunFolderError, match="already holds a run .*config.json.*checkpoint.pt"):
        train(_config(iterations=2, eval_every=2), folder, progress=False)
    train_cli.main(["--iterations", "2", "--batch-size", "8", "--out", str(tmp_path / "cli"), "--no-progress",
                    "--compile", "off"])
    code, err = _cli(["--iterations", "2", "--out", str(tmp_path / "cli"), "--no-progress"], capsys)
    assert code == 2 and "already holds a run" in err
    train(_config(iterations=3, eval_every=3, log_every=1), folder, progress=False, overwrite=True)
    assert [r["iteration"] for r in _records(folder / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((folder / "summary.json").read_text())["iterations"] == 3


def test_a_live_run_holds_its_folder(tmp_path, teacher_cache):
    folder = tmp_path / "run"
    folder.mkdir()
    with hold_folder(folder):
        with pytest.raises(RunFolderError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            train(_config(iterations=2), folder, progress=False)
    train(_config(iterations=2, eval_every=2), folder, progress=False)  # released


def test_resume_checks_that_config_and_checkpoint_belong_together(tmp_path, teacher_cache):
    folder = tmp_path / "run"
    _killed(_config(), folder, 3)
    config = json.loads((folder / "config.json").read_text())
    config["beta"] = 0.0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not belong together: they differ in beta"):
        train(None, folder, resume=True, progress=False)


def test_paths_are_stored_resolved(tmp_path, teacher_cache, monkeypatch):
    cached = next((teacher_cache / "teachers").glob("digits-wrn-16-2.pt"))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "teacher.pt").write_bytes(cached.read_bytes())
    monkeypatch.chdir(tmp_path / "work")
    _killed(_config(teacher_ckpt="teacher.pt"), "run", 3)
    config = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert config["teacher_ckpt"] == str(tmp_path / "work" / "teacher.pt")
    assert os.path.isabs(config["data_root"])
    monkeypatch.chdir(tmp_path)
    assert train(None, tmp_path / "work" / "run", resume=True, progress=False)["iterations"] == 6


def test_resume_refuses_other_options(tmp_path, teacher_cache, capsys):
    code, err = _cli(["--resume", str(tmp_path), "--iterations", "24", "--beta", "0"], capsys)
    assert code == 2 and "cannot change: drop --beta, --iterations" in err


@pytest.mark.parametrize("argv", [["--student", "resnet-18"], ["--teacher", "resnet-18"], ["--student", "vgg-11"],
                                  ["--dataset", "cifar10", "--data-root", "/nonexistent"]])
def test_a_failed_start_creates_nothing(argv, tmp_path, teacher_cache, capsys):
    """Architectures, pairing and data are checked before any folder is made and before a teacher is pretrained (a
    ResNet teacher is not cached: it would be pretrained first if the pairing were checked late)."""
    code, _ = _cli(argv + ["--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 2 and not (tmp_path / "out").exists()
    assert not (teacher_cache / "teachers" / "digits-resnet-18.pt").exists()


# -- 2. exact resume -------------------------------------------------------------------------------------------------

def test_resume_is_exact_when_the_checkpoint_falls_inside_a_logging_window(tmp_path, teacher_cache):
    """Logged every 3 iterations, checkpointed every 2: the checkpoint at 4 cuts the window 4..6."""
    train(_config(), tmp_path / "whole", progress=False)
    _killed(_config(), tmp_path / "killed", 5)
    assert load_file(tmp_path / "killed" / "checkpoint.pt")["iteration"] == 4
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as log:
        log.write('{"iteration": 5, "loss_gen')  # a line torn by the kill
    train(None, tmp_path / "killed", resume=True, progress=False)
    _assert_same_run(tmp_path / "whole", tmp_path / "killed")


def _signal_at(monkeypatch, signum, at_call):
    """Sends `signum` to this process inside the `at_call`-th iteration (counted over every run of the test)."""
    calls = {"n": 0}
    loop = generator_strategy.zero_shot_knowledge_transfer

    def loop_with_signal(steps, *, on_iteration_end, **kwargs):
        def hook(iteration, outputs):
            calls["n"] += 1
            if calls["n"] == at_call:
                os.kill(os.getpid(), signum)
            on_iteration_end(iteration, outputs)
        loop(steps, on_iteration_end=hook, **kwargs)

    monkeypatch.setattr(generator_strategy, "zero_shot_knowledge_transfer", loop_with_signal)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_iteration_with_a_checkpoint(signum, code, tmp_path, teacher_cache, capsys,
                                                              monkeypatch):
    train(_config(checkpoint_every=0), tmp_path / "whole", progress=False)
    _signal_at(monkeypatch, signum, at_call=2)
    out = tmp_path / "cli"
    argv = ["--iterations", "6", "--batch-size", "16", "--eval-every", "3", "--log-every", "3",
            "--no-tensorboard", "--out", str(out), "--no-progress", "--compile", "off"]
    exit_code, err = _cli(argv, capsys)
    assert exit_code == code
    assert f"continue with: python -m zskt_fast.train --resume {out / 'seed0'}" in err
    assert load_file(out / "seed0" / "checkpoint.pt")["iteration"] == 2
    monkeypatch.undo()
    assert train_cli.main(["--resume", str(out / "seed0"), "--no-progress"]) == 0
    _assert_same_run(tmp_path / "whole", out / "seed0")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_resuming_the_parent_continues_every_seed_and_writes_the_summary(tmp_path, teacher_cache, capsys,
                                                                         monkeypatch):
    argv = ["--iterations", "4", "--batch-size", "8", "--eval-every", "2", "--log-every", "2", "--seeds", "0", "1",
            "2", "--no-tensorboard", "--no-progress", "--compile", "off"]
    assert train_cli.main(argv + ["--out", str(tmp_path / "whole")]) == 0
    _signal_at(monkeypatch, signal.SIGTERM, at_call=6)  # seed 1, its second iteration; seed 2 never starts
    code, err = _cli(argv + ["--out", str(tmp_path / "cut")], capsys)
    assert code == 143 and f"--resume {tmp_path / 'cut'}" in err
    assert not (tmp_path / "cut" / "seed2").exists() or not (tmp_path / "cut" / "seed2" / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert train_cli.main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    assert "seed0" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["seeds"] == [0, 1, 2]
    assert [r["student_acc"] for r in cut["runs"]] == [r["student_acc"] for r in whole["runs"]]
    for seed in ("seed0", "seed1", "seed2"):
        _assert_same_run(tmp_path / "whole" / seed, tmp_path / "cut" / seed)


# -- 3. errors, not tracebacks ---------------------------------------------------------------------------------------

def test_empty_files_are_named(tmp_path, teacher_cache, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    code, err = _cli(["--teacher-ckpt", str(empty), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and f"{empty}: the file is empty (0 bytes)" in err
    with pytest.raises(SystemExit) as exit_info:
        mte.main(["--net-a", str(empty), "--arch-a", "wrn-16-1", "--net-b", str(empty), "--arch-b", "wrn-16-2",
                  "--out", str(tmp_path / "m"), "--no-progress"])
    assert exit_info.value.code == 2 and "is empty (0 bytes)" in capsys.readouterr().err


def test_a_truncated_file_gets_no_advice_about_python_objects(tmp_path):
    path = tmp_path / "t.pt"
    atomic_save({"x": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a complete PyTorch file") as error:
        load_file(path)
    assert "Python objects" not in str(error.value)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a complete PyTorch file"):
        load_file(tmp_path / "text.pt")


@pytest.mark.parametrize("program, argv", [
    (pretrain, ["--device", "gpu"]), (mte, ["--device", "gpu"]), (train_cli, ["--device", "gpu"]),
    pytest.param(pretrain, ["--device", "cuda"], marks=pytest.mark.skipif(torch.cuda.is_available(), reason="GPU")),
    pytest.param(mte, ["--device", "cuda", "--run", "x"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_bad_devices_are_one_line_errors(program, argv, tmp_path, teacher_cache, capsys):
    with pytest.raises(SystemExit) as exit_info:
        program.main(argv + ["--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "device must be auto, cpu, cuda or cuda:N" in err or "CUDA is not available" in err


@pytest.mark.parametrize("program", [train_cli, toy, mte, pretrain])
def test_an_output_path_that_is_a_file_is_refused_before_any_work(program, tmp_path, teacher_cache, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = str(blocker / "x.pt") if program is pretrain else str(blocker)
    extra = {mte: ["--run", str(tmp_path / "none")], toy: ["--iterations", "100000"]}.get(program, [])
    if program is mte:  # a run folder to read, so that the error is the output folder's
        train(_config(iterations=2, eval_every=2), tmp_path / "none", progress=False)
    with pytest.raises(SystemExit) as exit_info:
        program.main(extra + ["--out", out, "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and ("is a file" in err or "cannot be written" in err), err


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_keeps_the_previous_checkpoint(code, words, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"x": torch.ones(3)}, path)

    def failing_save(obj, f):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(StorageError, match=f"cannot write {path}: {words} \\(the previous file there is intact\\)"):
        atomic_save({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_file(path)["x"], torch.ones(3)) and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_a_config_with_wrong_types_is_named(tmp_path, teacher_cache, capsys):
    folder = tmp_path / "run"
    _killed(_config(), folder, 3)
    config = json.loads((folder / "config.json").read_text())
    config["iterations"] = "six"
    (folder / "config.json").write_text(json.dumps(config))
    code, err = _cli(["--resume", str(folder), "--no-progress"], capsys)
    assert code == 2 and "config.json: iterations must be int or null, got 'six'" in err


def test_programs_end_ctrl_c_with_one_line(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "run_toy", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        toy.main(["--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 130 and capsys.readouterr().err.strip() == "python -m zskt_fast.toy: interrupted"


# -- 4. divergence ---------------------------------------------------------------------------------------------------

def test_pretraining_that_diverges_stops_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "teacher.pt"
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(["--arch", "wrn-16-1", "--epochs", "2", "--lr", "1e6", "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 1 and "pretraining diverged" in capsys.readouterr().err
    assert not out.exists()
    for argv in (["--lr", "inf"], ["--weight-decay", "nan"]):
        with pytest.raises(SystemExit) as exit_info:
            pretrain.main(argv + ["--out", str(out), "--no-progress"])
        assert exit_info.value.code == 2


def test_a_teacher_holding_nan_says_what_to_do(tmp_path, teacher_cache, capsys):
    cached = next((teacher_cache / "teachers").glob("digits-wrn-16-2.pt"))
    state = torch.load(cached, weights_only=True)
    state["state_dict"]["fc.weight"][0, 0] = float("nan")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    code, err = _cli(["--teacher-ckpt", str(bad), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "fc.weight holds NaN" in err and "delete or replace it" in err


@pytest.mark.parametrize("where", ["/proc/zskt-fast-out", "/dev/null/out"])
def test_output_folders_that_cannot_be_made_are_refused_before_any_work(where, capsys):
    with pytest.raises(SystemExit) as exit_info:
        toy.main(["--iterations", "100000", "--out", where, "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and where in err and "Traceback" not in err
