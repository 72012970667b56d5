"""Data-parallel and seed-parallel runs on the CPU with gloo, launched by torchrun itself (as a subprocess): N ranks
compute what one process computes, resume exactly, share seeds and transition curves, and bad launches end with a
clear error instead of a hang (every launch has a timeout)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from zskt_fast.engine.lifecycle.distributed import GlobalBatchNorm, convert_batch_norm
from zskt_fast.models import Generator, build_classifier

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
TIMEOUT = 240  # seconds for one launch: a hang fails the test instead of the CI job
CLI = ["--iterations", "3", "--batch-size", "8", "--n-student-steps", "2", "--compile", "off", "--no-progress",
       "--no-tensorboard", "--eval-every", "3", "--checkpoint-every", "1"]


def _launch(args, ranks=None, threads=None):
    """Runs `args` (after the interpreter) directly, or under torchrun with `ranks` processes; returns the process."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    prefix = [sys.executable] if ranks is None else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc-per-node", str(ranks)]
    return subprocess.run(prefix + args, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def _ok(process):
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process


def _worker(out, ranks=None, *extra):
    return _ok(_launch([str(WORKER), str(out), *extra], ranks))


def _close(a, b, rtol):
    """Every tensor of a equals b's within rtol of its largest value."""
    for key in a:
        if a[key].is_floating_point():
            scale = a[key].abs().max().item() + 1e-30
            assert (a[key] - b[key]).abs().max().item() <= rtol * scale, key


@pytest.fixture(scope="module")
def float64_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    _worker(root / "one", None, "--float64")
    _worker(root / "two", 2, "--float64")
    return root


def test_two_ranks_compute_what_one_process_computes(float64_runs):
    """Float64, so that what is compared is the algorithm, not rounding: in float32 the two differ by more than
    round-off after a few steps, because Adam divides each gradient component by its running RMS, so a last-bit
    difference in a near-zero component becomes an update difference of up to the learning rate (measured: losses
    0.5% apart after 3 iterations). Tolerance 1e-8 of each tensor's largest value: float64 round-off (1e-16) of two
    summation orders, grown through 9 Adam steps; measured 1.2e-10."""
    one, two = (torch.load(float64_runs / name / "result.pt", weights_only=True) for name in ("one", "two"))
    for part in ("student", "generator"):
        _close(one[part], two[part], 1e-8)
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-9, atol=1e-12)
    assert "GlobalBatchNorm" not in two["types"]  # the networks handed back have plain batch norm
    config = json.loads((float64_runs / "two" / "run" / "config.json").read_text())
    assert config["world_size"] == 2 and config["sync_bn"] is True


def test_the_batch_norm_prior_of_two_ranks_is_that_of_the_global_batch(tmp_path):
    """DFQ's prior (and its other terms) over 2 ranks x 4 images equals 1 process x 8 images in float64: the batch
    statistics at the teacher's BatchNorm layers are combined over the ranks (gradients through the gather)."""
    _worker(tmp_path / "one", None, "--float64", "--method", "dfq")
    _worker(tmp_path / "two", 2, "--float64", "--method", "dfq")
    one, two = (torch.load(tmp_path / name / "result.pt", weights_only=True) for name in ("one", "two"))
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-9, atol=1e-12)
    for part in ("student", "generator"):
        _close(two[part], one[part], rtol=1e-8)


@pytest.mark.parametrize("method", ["fast", "deepinversion", "nayer", "cmi"])
def test_two_ranks_synthesise_what_one_process_synthesises(tmp_path, method):
    """A pool method over 2 ranks x 4 images: each rank's share of z (or of the images), the prior of the global
    batch, the copy's gradients averaged and the share's scaled: both rounds' synthesis losses and images, and the meta
    generator, equal one process x 8 in float64 (the student's pool batches, drawn per rank, are not compared)."""
    _worker(tmp_path / "one", None, "--float64", "--method", method)
    _worker(tmp_path / "two", 2, "--float64", "--method", method)
    one, two = (torch.load(tmp_path / name / "result.pt", weights_only=True) for name in ("one", "two"))
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-9, atol=1e-12)
    loops = 2 if method == "nayer" else 1  # a rank's round holds its share of each loop's batch, loop after loop
    for a, b in zip(one["images"], two["images"]):
        b = b.view(2, loops, -1, *b.shape[1:]).transpose(0, 1).reshape(b.shape)
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)
    # The biases of the generator's convolutions that a BatchNorm follows have a zero gradient up to rounding, which
    # Adam's normalisation turns into steps of up to ~1e-9 that differ with the summation order (measured: 3e-9;
    # every other tensor within 5e-12): they are left out.
    before_batch_norm = ("body.2.bias", "body.6.bias")
    _close({k: v for k, v in two["generator"].items() if k not in before_batch_norm}, one["generator"], rtol=1e-8)
    assert len(one["images"]) == 2 and (method == "deepinversion") == (not one["generator"])


def test_per_rank_batch_norm_is_a_different_algorithm(float64_runs):
    _worker(float64_runs / "local-bn", 2, "--float64", "--no-sync-bn")
    one = torch.load(float64_runs / "one" / "result.pt", weights_only=True)
    local = torch.load(float64_runs / "local-bn" / "result.pt", weights_only=True)
    assert not torch.allclose(one["losses"], local["losses"], rtol=1e-6)


def test_a_stopped_two_rank_run_resumes_to_the_uninterrupted_weights_bit_for_bit(float64_runs):
    cut = float64_runs / "cut"
    _worker(cut, 2, "--float64", "--stop", "2")
    assert json.loads((cut / "run" / "config.json").read_text())["world_size"] == 2
    _worker(cut, 2, "--float64", "--resume")
    whole, resumed = (torch.load(float64_runs / name / "result.pt", weights_only=True) for name in ("two", "cut"))
    for part in ("student", "generator"):
        assert all(torch.equal(whole[part][k], resumed[part][k]) for k in whole[part]), part
    # and by one process: refused, with the number of processes to use
    process = _launch([str(WORKER), str(cut), "--float64", "--resume"])
    assert process.returncode != 0
    assert "written by a run of 2 process(es) and is resumed by 1" in process.stderr


def test_sigterm_to_torchrun_stops_every_rank_with_a_checkpoint_and_the_run_resumes_exactly(tmp_path, teacher_cache):
    """A real kill: SIGTERM to torchrun (which forwards it to both ranks) right after the first checkpoint; the ranks
    agree on the iteration to stop after, rank 0 writes a checkpoint, and the resumed run ends with the weights of an
    uninterrupted one, bit for bit."""
    args = ["-m", "zskt_fast.train", *CLI, "--iterations", "40", "--checkpoint-every", "5", "--eval-every", "40"]
    _ok(_launch([*args, "--out", str(tmp_path / "whole")], ranks=2))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args,
               "--out", str(tmp_path / "cut")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "cut" / "seed0" / "checkpoint.pt"
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode != 0
    stopped = re.search(r"interrupted by SIGTERM after iteration (\d+)", err)
    assert stopped and int(stopped[1]) < 40, err[-2000:]
    assert "continue with: torchrun --nproc-per-node 2 -m zskt_fast.train --resume" in err
    _ok(_launch(["-m", "zskt_fast.train", "--resume", str(tmp_path / "cut" / "seed0")], ranks=2))
    whole, cut = (torch.load(tmp_path / name / "seed0" / "student.pt", weights_only=True)["state_dict"]
                  for name in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


@pytest.fixture(scope="module")
def cli_two_ranks(tmp_path_factory, teacher_cache):
    out = tmp_path_factory.mktemp("cli") / "two"
    process = _ok(_launch(["-m", "zskt_fast.train", *CLI, "--out", str(out)], ranks=2))
    return out, process


def test_the_cli_under_torchrun_writes_one_run_from_rank_zero(cli_two_ranks, tmp_path):
    out, process = cli_two_ranks
    assert process.stdout.count("seed 0: teacher test accuracy") == 1  # rank 0 speaks for the run
    assert "data-parallel over 2 processes: 4 of the 8 images" in process.stdout
    summary = json.loads((out / "seed0" / "summary.json").read_text())
    assert summary["iterations"] == 3 and 0 <= summary["student_acc"] <= 100
    assert len((out / "seed0" / "metrics.jsonl").read_text().splitlines()) == 1  # one writer, one record per log
    assert json.loads((out / "seed0" / "config.json").read_text())["world_size"] == 2


def test_transition_curves_shared_over_ranks_equal_one_process(cli_two_ranks, tmp_path):
    out, _ = cli_two_ranks
    args = ["--run", str(out / "seed0"), "--n-images", "12", "--steps", "4", "--no-progress"]
    _ok(_launch(["-m", "zskt_fast.mte", *args, "--out", str(tmp_path / "one")]))
    # `--` keeps torchrun's own parser from reading --run as an abbreviation of its --run-path
    _ok(_launch(["-m", "zskt_fast.mte", "--", *args, "--out", str(tmp_path / "two")], ranks=2))
    (one,), (two,) = (list((tmp_path / name).glob("curves_*.npz")) for name in ("one", "two"))
    one, two = np.load(one), np.load(two)
    for key in ("p_a", "p_b", "targets", "sources", "indices"):
        np.testing.assert_array_equal(one[key], two[key])
    assert json.loads((tmp_path / "two" / "mte.json").read_text())["processes"] == 2


def test_seed_parallel_ranks_give_each_seed_its_single_process_result(tmp_path, teacher_cache):
    _ok(_launch(["-m", "zskt_fast.train", *CLI, "--seeds", "0", "1", "--parallel", "seeds",
                 "--out", str(tmp_path / "shared")], ranks=2))
    for seed in (0, 1):  # torchrun gives each process one thread: the single-process runs get one too
        _ok(_launch(["-m", "zskt_fast.train", *CLI, "--seeds", str(seed), "--out", str(tmp_path / f"alone{seed}")],
                    threads=1))
        shared = torch.load(tmp_path / "shared" / f"seed{seed}" / "student.pt", weights_only=True)["state_dict"]
        alone = torch.load(tmp_path / f"alone{seed}" / f"seed{seed}" / "student.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(shared[k], alone[k]) for k in shared), seed
    combined = json.loads((tmp_path / "shared" / "summary.json").read_text())
    assert combined["seeds"] == [0, 1] and len(combined["runs"]) == 2


@pytest.mark.parametrize("ranks, extra, message", [
    (2, ["--batch-size", "7"], "the global batch size 7 is not divisible by the world size 2"),
    (1, ["--dist-backend", "nccl", "--device", "cpu"], "the NCCL backend needs CUDA devices"),
])
def test_bad_launches_end_with_a_clear_error(tmp_path, teacher_cache, ranks, extra, message):
    process = _launch(["-m", "zskt_fast.train", *CLI, *extra, "--out", str(tmp_path / "run")], ranks=ranks)
    assert process.returncode != 0
    assert message in process.stderr
    assert not (tmp_path / "run").exists()  # a refused start leaves the folder as it found it (no run.json)


def test_global_batch_norm_swaps_in_and_out_keeping_every_tensor():
    torch.manual_seed(0)
    net, generator = build_classifier("wrn-10-1"), Generator(z_dim=8, image_size=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    convert_batch_norm(net)
    convert_batch_norm(generator)
    assert sum(isinstance(m, GlobalBatchNorm) for m in net.modules()) == 7
    assert list(net.state_dict()) == list(before)
    x = torch.randn(4, 3, 8, 8)
    net.train()
    plain = build_classifier("wrn-10-1").train()
    plain.load_state_dict(before)
    # without a process group it is plain batch norm: the same outputs and running statistics
    assert torch.equal(net(x)[0], plain(x)[0]) and torch.equal(net.bn1.running_mean, plain.bn1.running_mean)
    convert_batch_norm(net, to_global=False)
    assert not any(isinstance(m, GlobalBatchNorm) for m in net.modules())
    assert type(net.bn1) is torch.nn.BatchNorm2d and net.bn1.running_mean is not None
