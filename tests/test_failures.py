"""Every failure a user can cause or meet ends in one line with the exit status that says whose it is (2: the user's,
130 / 143: an interrupt, 1: the machine's), says how to continue where work was saved, and leaves no half-made output:
full disks wherever the error is chained, unreadable image folders, interrupts of every program, refused starts, a lost
process of a torchrun job."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zskt_fast import common, fewshot, mte, pretrain, reproduce, toy
from zskt_fast import train as train_cli
from zskt_fast.common import StorageError, atomic_write_text, left_as_found, storage_failure
from zskt_fast.data import DataError, check_images, load_dataset, read_image
from zskt_fast.engine import distill as distill_module
from zskt_fast.engine.methods import generator_strategy
from zskt_fast.engine.experiments import supervised
from zskt_fast.engine.lifecycle.checkpoint import atomic_save, load_file
from zskt_fast.engine.lifecycle.metrics import MetricsLog, save_image_grid
from zskt_fast.engine.lifecycle.run import RunInterrupted

TINY_TRAIN = ["--iterations", "4", "--batch-size", "8", "--n-student-steps", "2", "--eval-every", "2", "--log-every",
              "2", "--no-tensorboard", "--compile", "off", "--no-progress"]


def _exit(main, argv, capsys):
    """(exit status, stderr) of a program's main that ends by parser.exit."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    return lines[0] if len(lines) == 1 else "\n".join(lines)


# -- full disks --------------------------------------------------------------------------------------------------------

class _FullDisk(io.RawIOBase):
    """A file whose writes fail as a full (or read-only, over-quota) disk fails them."""

    def __init__(self, code=errno.ENOSPC, room=0):
        self.code, self.room = code, room

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return len(data)


def _disk_fills_at(monkeypatch, write_number: int, code=errno.ENOSPC, name: str = ""):
    """The `write_number`-th atomic write (counted from 1) of files whose name ends with `name`, and every later
    write, fail as a full disk does."""
    calls = {"n": 0}
    real = common._open_for_writing

    def opener(handle):
        calls["n"] += os.readlink(f"/proc/self/fd/{handle}").endswith(name)
        if calls["n"] >= write_number:
            os.close(handle)
            return _FullDisk(code)
        return real(handle)

    monkeypatch.setattr(common, "_open_for_writing", opener)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk quota exceeded"),
                                         (errno.EROFS, "read-only file system")])
def test_torch_save_hides_enospc_in_its_chain_and_it_is_still_found(code, words, tmp_path, monkeypatch):
    """torch.save's zip writer raises a RuntimeError ('unexpected pos') whose context is the write's OSError."""
    with pytest.raises(RuntimeError) as error:
        torch.save({"w": torch.randn(1000)}, _FullDisk(code, room=1000))  # the disk fills inside the file
    assert not isinstance(error.value, OSError)
    assert storage_failure(error.value).errno == code
    path = tmp_path / "checkpoint.pt"
    atomic_save({"x": torch.ones(3)}, path)
    _disk_fills_at(monkeypatch, 1, code)
    with pytest.raises(StorageError, match=f"cannot write {path}: {words} \\(the previous file there is intact\\)"):
        atomic_save({"x": torch.zeros(3)}, path)
    assert torch.equal(load_file(path)["x"], torch.ones(3)) and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_an_error_not_caused_by_the_storage_is_not_blamed_on_it():
    assert storage_failure(RuntimeError("unexpected pos")) is None
    assert storage_failure(OSError(errno.EACCES, "Permission denied")) is None
    try:
        try:
            raise OSError(errno.EIO, "I/O error")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert storage_failure(outer) is None


def _grid(path):
    save_image_grid(torch.rand(4, 1, 8, 8), path, mean=(0.0,), std=(1.0,))


def _curves(path):
    from zskt_fast.engine.experiments.transition_curves import TransitionCurves
    TransitionCurves(torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.zeros(2, 3, dtype=torch.long),
                     torch.zeros(2, dtype=torch.long), torch.arange(2), 3, 0.1).save(path)


def _figure(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zskt_fast.common import atomic_write
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


@pytest.mark.parametrize("name, write", [("summary.json", lambda p: atomic_write_text(p, "{}")),
                                         ("iter_000001.png", _grid), ("curves.npz", _curves),
                                         ("transition_curves.png", _figure)])
def test_every_kind_of_file_keeps_its_previous_version_on_a_full_disk(name, write, tmp_path, monkeypatch):
    path = tmp_path / name
    write(path)
    before = path.read_bytes()
    _disk_fills_at(monkeypatch, 1)
    with pytest.raises(StorageError, match=f"cannot write {path}: disk full \\(the previous file there is intact\\)"):
        write(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [name]


def test_the_metrics_log_names_itself_on_a_full_disk(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"iteration": 1})

    def full(self, *args, **kwargs):
        return _FullDisk()

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(StorageError, match="cannot write .*metrics.jsonl: disk full"):
        log.write({"iteration": 2})


def test_a_disk_that_fills_during_a_run_ends_it_in_one_line_and_the_run_continues(tmp_path, teacher_cache, capsys,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    _disk_fills_at(monkeypatch, 3, name="checkpoint.pt")  # the checkpoints of iterations 1 and 2 are written
    code, err = _exit(train_cli.main, TINY_TRAIN + ["--checkpoint-every", "1", "--out", str(out)], capsys)
    line = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err, err
    assert line[0] == (f"python -m zskt_fast.train: error: cannot write {out / 'seed0' / 'checkpoint.pt'}: disk full "
                       f"(the previous file there is intact)")
    assert line[1] == f"continue with: python -m zskt_fast.train --resume {out / 'seed0'}"
    assert load_file(out / "seed0" / "checkpoint.pt")["iteration"] == 2
    assert not [p for p in (out / "seed0").iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.undo()
    assert train_cli.main(["--resume", str(out / "seed0"), "--no-progress"]) == 0
    assert json.loads((out / "seed0" / "summary.json").read_text())["iterations"] == 4


# -- interrupts ----------------------------------------------------------------------------------------------------

def _signal_on_call(monkeypatch, owner, name, signum, at_call=1):
    """`owner.name` sends `signum` to this process on its `at_call`-th call, then does its work."""
    real, calls = getattr(owner, name), {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def _mte_files(tmp_path, teacher_cache):
    teacher = next((teacher_cache / "teachers").glob("digits-wrn-16-2.pt"))
    return ["--net-a", str(teacher), "--net-b", str(teacher), "--n-images", "4", "--steps", "3"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("program", ["train", "pretrain", "fewshot", "reproduce", "mte", "toy"])
def test_every_program_ends_an_interrupt_with_one_line_and_its_exit_status(program, signum, code, tmp_path,
                                                                           teacher_cache, capsys, monkeypatch):
    out = tmp_path / "out"
    if program == "train":
        _signal_on_call(monkeypatch, generator_strategy, "zero_shot_knowledge_transfer", signum)
        main, argv = train_cli.main, TINY_TRAIN + ["--out", str(out)]
        hint = f"continue with: python -m zskt_fast.train --resume {out / 'seed0'}"
    elif program == "pretrain":
        _signal_on_call(monkeypatch, supervised, "classifier_logits", signum)
        main, argv, hint = pretrain.main, ["--arch", "wrn-16-1", "--out", str(out / "t.pt"), "--no-progress"], None
    elif program == "fewshot":
        from zskt_fast.engine.experiments import fewshot as fewshot_engine
        _signal_on_call(monkeypatch, fewshot_engine, "kd_at_loss", signum, at_call=2)
        main = fewshot.main
        argv = ["--samples-per-class", "2", "--iterations", "4", "--no-tensorboard", "--out", str(out), "--no-progress"]
        hint = f"continue with: python -m zskt_fast.fewshot --out {out} --resume"
    elif program == "reproduce":
        _signal_on_call(monkeypatch, supervised, "classifier_logits", signum)  # the student from scratch
        main, argv = reproduce.main, ["--seeds", "0", "--out", str(out), "--no-progress"]
        hint = f"continue with: python -m zskt_fast.reproduce --seeds 0 --out {out} --no-progress (the finished runs"
    elif program == "mte":
        _signal_on_call(monkeypatch, mte, "transition_curves", signum)
        main, argv, hint = mte.main, _mte_files(tmp_path, teacher_cache) + ["--out", str(out), "--no-progress"], None
    else:
        _signal_on_call(monkeypatch, toy, "run_toy", signum)
        main, argv, hint = toy.main, ["--out", str(out), "--no-progress"], None
    status, err = _exit(main, argv, capsys)
    assert status == code and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"python -m zskt_fast.{program}: interrupted"), err
    if hint:
        assert lines[-1].startswith(hint), err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_an_interrupted_report_says_its_finished_parts_are_kept(tmp_path, capsys, monkeypatch):
    def stopped(self):
        raise RunInterrupted(signal.SIGTERM, tmp_path / "runs" / "zero-shot" / "seed0", 3)

    monkeypatch.setattr(reproduce.Report, "run", stopped)
    status, err = _exit(reproduce.main, ["--out", str(tmp_path), "--force", "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert status == 143 and "Traceback" not in err
    assert lines[0].startswith("python -m zskt_fast.reproduce: interrupted by SIGTERM after iteration 3")
    assert lines[1] == (f"continue with: python -m zskt_fast.reproduce --out {tmp_path} --no-progress (the finished "
                        f"runs are kept; an interrupted one resumes from its checkpoint)")


# -- what is not a user's mistake, and --debug ---------------------------------------------------------------------

def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(**kwargs):
        raise KeyError("frames")

    monkeypatch.setattr(toy, "run_toy", broken)
    status, err = _exit(toy.main, ["--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert status == 1 and _one_line(err) == ("python -m zskt_fast.toy: error: KeyError: 'frames' (--debug shows where "
                                              "it came from)")
    assert not (tmp_path / "o").exists()
    with pytest.raises(KeyError):
        toy.main(["--out", str(tmp_path / "o"), "--no-progress", "--debug"])


# -- image folders -------------------------------------------------------------------------------------------------

def _image_folder(root: Path, classes=("cat", "dog", "emu"), per_class=3, size=12):
    rng = np.random.RandomState(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.rand(size, size, 3) * 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png" if i % 2 else root / name / f"{i}.jpg")
    return root


def _break(root: Path) -> list[Path]:
    """A truncated PNG, half a JPEG, a text file named .jpg and a link to nothing, one per class and one more."""
    png, jpeg = root / "cat" / "1.png", root / "dog" / "0.jpg"
    png.write_bytes(png.read_bytes()[:60])
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    (root / "emu" / "notes.jpg").write_text("not an image")
    (root / "emu" / "gone.png").symlink_to(root / "nowhere.png")
    return [png, jpeg, root / "emu" / "notes.jpg", root / "emu" / "gone.png"]


def test_unreadable_images_are_all_named_before_any_work(tmp_path):
    root = _image_folder(tmp_path / "images")
    bad = _break(root)
    with pytest.raises(DataError) as error:
        load_dataset("folder", train=False, root=str(root), image_size=8)
    message = str(error.value)
    assert message.startswith(f"folder data set {root}: ") and "cannot be read" in message
    assert "Replace or remove them" in message
    shown = [str(p) for p in bad if str(p) in message]
    assert len(shown) == 3 and "and 1 more" in message  # three named, the rest counted
    assert "image file is truncated" in message or "cannot identify image file" in message
    for path in bad:
        path.unlink()
    assert len(load_dataset("folder", train=False, root=str(root), image_size=8)) == 3 * 3 - 2


def test_an_image_that_breaks_after_the_check_is_named_when_it_is_read(tmp_path):
    root = _image_folder(tmp_path / "images")
    check_images([str(p) for p in sorted(root.rglob("*.png"))], "folder")
    victim = next(root.rglob("*.png"))
    victim.write_text("overwritten")
    with pytest.raises(DataError, match=f"cannot read image {victim}: cannot identify image file"):
        read_image(str(victim))


def test_a_class_folder_without_images_and_a_single_class_are_refused(tmp_path):
    root = _image_folder(tmp_path / "images")
    (root / "fox").mkdir()
    (root / "fox" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"1 class folder\\(s\\) hold no image: {root / 'fox'} .*add images or "
                                        f"remove the folder"):
        load_dataset("folder", train=False, root=str(root))
    one = _image_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(DataError, match="one class subfolder \\(cat\\); .*needs at least two classes"):
        load_dataset("folder", train=False, root=str(one))


@pytest.mark.parametrize("program", ["train", "pretrain", "fewshot"])
@pytest.mark.parametrize("defect", ["unreadable", "empty class", "one class"])
def test_programs_refuse_a_bad_image_folder_in_one_line_leaving_nothing(program, defect, tmp_path, capsys):
    root = tmp_path / "images"
    classes = ("cat",) if defect == "one class" else ("cat", "dog", "emu")
    for split in ("train", "test"):
        _image_folder(root / split, classes=classes)
    if defect == "unreadable":
        _break(root / "train")
        _break(root / "test")
    elif defect == "empty class":
        (root / "train" / "fox").mkdir()
        (root / "test" / "fox").mkdir()
    out = tmp_path / "out"
    data = ["--dataset", "folder", "--data-root", str(root), "--image-size", "8", "--no-progress"]
    if program == "train":
        main, argv = train_cli.main, data + ["--teacher", "wrn-16-1", "--student", "wrn-16-1", "--out", str(out)]
    elif program == "pretrain":
        main, argv = pretrain.main, data + ["--arch", "wrn-16-1", "--out", str(out / "teacher.pt")]
    else:
        main, argv = fewshot.main, data + ["--teacher", "wrn-16-1", "--student", "wrn-16-1", "--teacher-ckpt",
                                           str(tmp_path / "none.pt"), "--samples-per-class", "1", "--out", str(out)]
    status, err = _exit(main, argv, capsys)
    line = _one_line(err)
    assert status == 2 and line.startswith(f"python -m zskt_fast.{program}: error: folder data set"), err
    assert not out.exists()


# -- refused starts leave the folder as they found it ---------------------------------------------------------------

def test_a_refused_start_removes_only_what_it_made(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.txt").write_text("the user's")
    with pytest.raises(ValueError):
        with left_as_found(folder):
            (folder / "run.json").write_text("{}")
            (folder / "seed0").mkdir()
            (folder / "seed0" / ".lock").write_text("123")
            (folder / "seed0" / "metrics.jsonl").write_text("")
            raise ValueError("refused")
    assert sorted(p.name for p in folder.iterdir()) == ["mine.txt"]
    with pytest.raises(ValueError):
        with left_as_found(folder):
            (folder / "seed0").mkdir()
            (folder / "seed0" / "checkpoint.pt").write_text("work")
            raise ValueError("failed later")
    assert (folder / "seed0" / "checkpoint.pt").exists()  # work was saved: kept
    with pytest.raises(KeyboardInterrupt):
        with left_as_found(tmp_path / "new"):
            (tmp_path / "new").mkdir()
            (tmp_path / "new" / "run.json").write_text("{}")
            raise KeyboardInterrupt
    assert (tmp_path / "new" / "run.json").exists()  # an interrupted start is continued with --resume
    with pytest.raises(ValueError):
        with left_as_found(tmp_path / "a" / "b"):
            (tmp_path / "a" / "b").mkdir(parents=True)
            raise ValueError("refused")
    assert (tmp_path / "a").exists() and not (tmp_path / "a" / "b").exists()  # only its own folder


def test_a_start_refused_after_planning_leaves_no_run_index(tmp_path, teacher_cache, capsys, monkeypatch):
    """A refusal inside distill (after run.json is written) is undone too."""
    def refuse(*args, **kwargs):
        raise ValueError("this student cannot train in bf16 here")

    monkeypatch.setattr(distill_module, "check_cpu_bf16_training", refuse)
    out = tmp_path / "out"
    status, err = _exit(train_cli.main, TINY_TRAIN + ["--out", str(out)], capsys)
    assert status == 2 and "cannot train in bf16" in err and not out.exists()


# -- torchrun: a lost process --------------------------------------------------------------------------------------

DYING_RANK = """
import os, sys
from zskt_fast import train
from zskt_fast.engine.methods import generator_strategy
loop = generator_strategy.zero_shot_knowledge_transfer
def dying(steps, *, on_iteration_end, **kwargs):
    def hook(iteration, outputs):
        on_iteration_end(iteration, outputs)
        if iteration == 1 and os.environ["RANK"] == "1":
            os._exit(9)
    loop(steps, on_iteration_end=hook, **kwargs)
generator_strategy.zero_shot_knowledge_transfer = dying
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_dead_rank_ends_rank_zero_in_one_line_with_the_resume_command(tmp_path, teacher_cache):
    script = tmp_path / "dying_rank.py"
    script.write_text(DYING_RANK)
    out = tmp_path / "run"
    argv = TINY_TRAIN + ["--checkpoint-every", "1", "--dist-timeout-minutes", "1", "--out", str(out)]
    # torchrun's agent looks at its workers every --monitor-interval seconds (0.1 by default) and sends SIGTERM to the
    # survivors of a dead one: rank 0 then says "interrupted". Five seconds let rank 0 meet the closed connection in
    # its next collective first, which is what this test is about (both endings give the resume command).
    process = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "--monitor-interval", "5", str(script), *argv], capture_output=True, text=True,
                             timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.returncode != 0
    ours = [line for line in process.stderr.splitlines() if line.startswith("python -m zskt_fast.train")]
    assert len(ours) == 1 and "lost contact with another process of the job" in ours[0], process.stderr[-3000:]
    assert f"continue with: torchrun --nproc-per-node 2 -m zskt_fast.train --resume {out / 'seed0'}" in \
        process.stderr
    assert "gloo/transport" not in process.stderr.replace(ours[0], "")  # no gloo traceback besides our one line
    assert load_file(out / "seed0" / "checkpoint.pt")["iteration"] >= 1
