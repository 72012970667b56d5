"""The benchmark suite cannot rot: every benchmark file runs in smoke mode (one tiny point per op, mode and backend;
no timing is asserted), and benchmarks/report.py turns a recorded results file into the right tables and plots."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RECORDED = Path(__file__).parent / "data" / "benchmarks_recorded.json"
OPS = ("kl_divergence", "attention_transfer", "zskt_student_loss", "zskt_generator_loss", "bn_statistics_prior")
MODES = ("forward", "backward", "full")

sys.path.insert(0, str(BENCHMARKS))
import report  # noqa: E402


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    files = sorted(str(p) for p in BENCHMARKS.glob("bench_*.py"))
    # The Triton interpreter is not a backend worth timing; without it, triton is not available on the CPU.
    env = {**os.environ, "ZSKT_BENCH_SMOKE": "1", "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
                             f"--benchmark-json={out / 'smoke.json'}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    return json.loads((out / "smoke.json").read_text()), out


@pytest.mark.slow
def test_every_benchmark_runs_in_smoke_mode(smoke_results):
    data, _ = smoke_results
    from zskt_fast.ops import available_backends

    # On the CPU, triton is the interpreter, which the smoke run leaves out (see the fixture).
    backends = {"eager", "compile", *[b for b in available_backends("cpu") if b not in ("eager", "triton")]}
    points = {(r["extra_info"].get("op"), r["extra_info"].get("mode"), r["extra_info"].get("backend"))
              for r in data["benchmarks"]}
    missing = {(op, mode, b) for op in OPS for mode in MODES for b in backends} - points
    assert not missing, sorted(missing)
    for r in data["benchmarks"]:
        if r["extra_info"].get("op") in OPS:
            assert r["extra_info"]["peak_bytes"] >= 0 and r["extra_info"]["floor_bytes"] > 0
            assert r["extra_info"]["q20_s"] <= r["extra_info"]["median_s"] <= r["extra_info"]["q80_s"]
    variants = {r["extra_info"].get("variant") for r in data["benchmarks"]}
    assert {"authors-eager", "zskt_fast"} <= variants
    assert {"batched", "per-image loop"} <= {r["extra_info"].get("method") for r in data["benchmarks"]}
    assert data["zskt_fast"]["smoke"] is True and data["zskt_fast"]["torch"]


@pytest.mark.slow
def test_report_draws_a_speed_and_a_memory_plot_per_op_and_sweep(smoke_results, capsys):
    _, out = smoke_results
    report.main([str(out / "smoke.json"), "--plots", str(out / "plots")])
    printed = capsys.readouterr().out
    assert "SMOKE MODE" in printed
    for op in OPS:
        for kind in ("speed", "memory"):
            plot = out / "plots" / f"{op}_{kind}_vs_batch.png"
            assert plot.stat().st_size > 1000, plot


def _table(lines, title):
    start = lines.index(title)
    rows = []
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_report_tables_of_a_recorded_run():
    """The ratios, bandwidths and memory in the tables are those of the recorded medians and byte counts."""
    data = json.loads(RECORDED.read_text())
    lines = report.report(data)
    rows = data["benchmarks"]
    copy = next(r for r in rows if r["extra_info"].get("backend") == "copy")
    peak = copy["extra_info"]["floor_bytes"] / copy["extra_info"]["median_s"] / 1e9
    assert f"copy bandwidth (read + write): {peak:.1f} GB/s" in lines

    point = [r for r in rows if r["extra_info"].get("op") == "kl_divergence" and r["extra_info"]["mode"] == "full"
             and r["extra_info"]["dtype"] == "float32" and r["extra_info"]["sweep"] == "classes"]
    assert {r["extra_info"]["backend"] for r in point} >= {"eager", "compile", "cpu"}
    first = min(r["extra_info"]["classes"] for r in point)
    by_backend = {r["extra_info"]["backend"]: r for r in point if r["extra_info"]["classes"] == first}
    table = _table(lines, "kl_divergence full, float32, cpu, by classes")
    cpu_row = next(row for row in table if row[1] == "cpu" and row[0].endswith(f"{first:,}"))
    cpu, eager, compiled = (by_backend[b]["extra_info"] for b in ("cpu", "eager", "compile"))
    assert cpu_row[2] == f"{cpu['median_s'] * 1e3:.3f}"
    assert cpu_row[4] == f"{eager['median_s'] / cpu['median_s']:.2f}"
    assert cpu_row[5] == f"{compiled['median_s'] / cpu['median_s']:.2f}"
    gbps = cpu["floor_bytes"] / cpu["median_s"] / 1e9
    assert cpu_row[6] == f"{gbps:.1f}" and cpu_row[7] == f"{100 * gbps / peak:.0f}%"
    assert cpu_row[8] == f"{cpu['peak_bytes'] / 1e6:.2f}"

    train = _table(lines, next(line for line in lines if line.startswith("train ")))
    authors = next(r for r in rows if r["extra_info"].get("variant") == "authors-eager")
    ours = next(r for r in rows if r["extra_info"].get("variant") == "zskt_fast")
    ratio = ((authors["stats"]["median"] / authors["extra_info"]["iterations_per_round"])
             / (ours["stats"]["median"] / ours["extra_info"]["iterations_per_round"]))
    assert next(row for row in train if row[0] == "zskt_fast")[3] == f"{ratio:.2f}"


def test_report_refuses_a_file_that_is_not_a_benchmark_result(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(SystemExit, match="not a pytest-benchmark JSON"):
        report.main([str(path)])


def test_sass_loops_counts_the_kl_kernels_main_loops():
    """benchmarks/sass_loops.py finds every KL kernel's main loop in nvcc's sm_90 code, and its counts say what the
    kernels are built to do: the backward of rows of 32 classes and more (a warp or a block per row) loads two logits
    per gradient element and nothing else (the row's statistics stay in registers), and every loop takes its
    exponentials on the MUFU unit."""
    import sass_loops

    if sass_loops.tool("nvcc", "CUDACXX") is None or sass_loops.tool("cuobjdump") is None:
        pytest.skip("nvcc or cuobjdump not found: no sm_90 code to count")
    loops = {loop.kernel: loop for loop in sass_loops.compile_and_count(ROOT / "csrc/cuda/kl_divergence.cu", 90)}
    sides = {"student": 1, "teacher": 1, "student, teacher": 2}
    for dtype in ("float32", "bfloat16", "float16", "float64"):
        for kernel in ("kl_forward_warp_kernel", "kl_forward_chunk_kernel"):
            loop = loops[f"{kernel}<{dtype}>"]
            assert loop.loads == 8 and loop.stores == 0, loop  # kUnroll (4) classes of two logit sets a trip
        for wanted, count in sides.items():
            assert f"kl_backward_kernel<{wanted}, {dtype}>" in loops  # rows under 32 classes
            for kernel in ("kl_backward_warp_kernel", "kl_backward_chunk_kernel"):
                loop = loops[f"{kernel}<{wanted}, {dtype}>"]
                assert loop.stores % count == 0 and loop.loads == 2 * loop.stores // count, loop
    for name, loop in loops.items():
        assert loop.instructions > 0 and (loop.exponentials > 0 or name.endswith("float64>")), loop
