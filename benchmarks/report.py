"""Tables (and plots) of a pytest-benchmark JSON file written by the benchmarks in this folder.

    python benchmarks/report.py benchmarks/out/ops.json [--plots DIR]

Op benchmarks: one table per op, sweep, dtype and mode, with every backend at every point: median time and 20-80%
quantiles, ratio to eager and to torch.compile (above 1: faster), achieved bandwidth at the memory floor and its share
of the machine's copy bandwidth (when bench_memory_bandwidth.py ran in the same file), and peak extra memory.
`--plots DIR` draws DIR/<op>_speed_vs_<sweep>.png and DIR/<op>_memory_vs_<sweep>.png (log-log, one line per backend,
one panel per mode and dtype). Training and transition-curve benchmarks get their own tables.
"""
from __future__ import annotations

import argparse
import json
import platform
from collections import defaultdict
from pathlib import Path

MODES = ("forward", "backward", "full")
BACKEND_ORDER = ("eager", "compile", "cpu", "cuda", "triton", "liger")


def median_s(row) -> float:
    return row["extra_info"].get("median_s", row["stats"]["median"])


def load(path) -> dict:
    with open(path) as f:
        data = json.load(f)
    if "benchmarks" not in data:
        raise SystemExit(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def header(data) -> list[str]:
    machine = data.get("machine_info", {})
    versions = data.get("zskt_fast", {})
    lines = [f"machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
             f"{machine.get('cpu', {}).get('count', '?')} CPUs"
             + (f", {versions['gpu']}" if versions.get("gpu") else "")
             + f"; date {data.get('datetime', '?')[:10]}"]
    if versions:
        lines.append(f"versions: zskt_fast {versions.get('zskt_fast')}, python {versions.get('python')}, torch "
                     f"{versions.get('torch')}, triton {versions.get('triton')}, cuda {versions.get('cuda')}; "
                     f"{versions.get('threads')} torch threads" + ("; SMOKE MODE (times mean nothing)"
                                                                     if versions.get("smoke") else ""))
    return lines


def copy_bandwidth(rows) -> float | None:
    copy = next((r for r in rows if r["extra_info"].get("backend") == "copy"), None)
    return copy["extra_info"]["floor_bytes"] / median_s(copy) / 1e9 if copy else None


def op_rows(rows) -> list[dict]:
    return [r for r in rows if r["extra_info"].get("op") not in (None, "copy")]


def backend_key(name: str) -> int:
    return BACKEND_ORDER.index(name) if name in BACKEND_ORDER else len(BACKEND_ORDER)


def op_tables(rows, peak_gbps: float | None) -> list[str]:
    out = []
    tables = defaultdict(list)
    for r in op_rows(rows):
        e = r["extra_info"]
        tables[(e["op"], e["sweep"], e["dtype"], e["mode"])].append(r)
    for (op, sweep, dtype, mode), items in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                                                  MODES.index(kv[0][3]))):
        device = items[0]["extra_info"].get("device", "?")
        out += ["", f"{op} {mode}, {dtype}, {device}, by {sweep}",
                f"| {sweep} | backend | median ms | 20-80% ms | x eager | x compile | GB/s at floor | % of copy "
                f"bandwidth | peak extra MB |", "|---|---|---|---|---|---|---|---|---|"]
        by_point = defaultdict(dict)
        for r in items:
            e = r["extra_info"]
            by_point[point_label(e)][e["backend"]] = r
        for label, backends in sorted(by_point.items(), key=lambda kv: kv[0][0]):
            eager, compiled = backends.get("eager"), backends.get("compile")
            for name in sorted(backends, key=backend_key):
                r = backends[name]
                e, t = r["extra_info"], median_s(r)
                gbps = e["floor_bytes"] / t / 1e9
                low, high = e.get("q20_s", r["stats"]["min"]), e.get("q80_s", r["stats"]["max"])
                out.append(
                    f"| {label[1]} | {name} | {t * 1e3:.3f} | {low * 1e3:.3f}-{high * 1e3:.3f} | "
                    f"{ratio(eager, t)} | {ratio(compiled, t)} | {gbps:.1f} | "
                    f"{f'{100 * gbps / peak_gbps:.0f}%' if peak_gbps else '-'} | "
                    f"{e['peak_bytes'] / 1e6:.2f} |")
    return out


def point_label(e) -> tuple:
    """(sort key, text) of a sweep point."""
    if e.get("classes") is not None and e["sweep"].startswith("classes"):
        return (e["classes"], f"{e['batch']} x {e['classes']:,}")
    return (e["x"], f"{e['x']:,}")


def ratio(base_row, t) -> str:
    return f"{median_s(base_row) / t:.2f}" if base_row else "-"


def draw_plots(rows, folder: Path) -> list[Path]:
    """<op>_speed_vs_<sweep>.png and <op>_memory_vs_<sweep>.png: a panel per (dtype, mode), a line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    series = defaultdict(lambda: defaultdict(list))
    for r in op_rows(rows):
        e = r["extra_info"]
        series[(e["op"], e["sweep"])][(e["dtype"], e["mode"], e["backend"])].append(
            (e["x"], median_s(r) * 1e3, e["peak_bytes"] / 1e6))
    for (op, sweep), lines in sorted(series.items()):
        dtypes = sorted({k[0] for k in lines}, key=lambda d: (d != "float32", d))
        modes = [m for m in MODES if any(k[1] == m for k in lines)]
        device = next(r["extra_info"].get("device", "") for r in op_rows(rows) if r["extra_info"]["op"] == op)
        for kind, column, unit in (("speed", 1, "median time (ms)"), ("memory", 2, "peak extra memory (MB)")):
            fig, axes = plt.subplots(len(dtypes), len(modes), figsize=(4.2 * len(modes), 3.4 * len(dtypes)),
                                     squeeze=False, sharex=True)
            for i, dtype in enumerate(dtypes):
                for j, mode in enumerate(modes):
                    ax = axes[i][j]
                    for backend in sorted({k[2] for k in lines}, key=backend_key):
                        points = sorted(lines.get((dtype, mode, backend), []))
                        values = [(p[0], p[column]) for p in points if p[column] > 0]
                        if values:
                            ax.plot(*zip(*values), marker="o", label=backend)
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                    ax.set_xticks(sorted({p[0] for points in lines.values() for p in points}))
                    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten, on the log axes
                        axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                        axis.set_minor_formatter(ticker.NullFormatter())
                    ax.set_title(f"{mode}, {dtype}", fontsize=10)
                    ax.grid(True, which="both", alpha=0.3)
                    if i == len(dtypes) - 1:
                        ax.set_xlabel(sweep + (" (elements per map side)" if sweep == "spatial" else ""))
                    if j == 0:
                        ax.set_ylabel(unit)
            axes[0][0].legend(fontsize=8)
            what = {"classes": " (B x C of 1M to 2M elements)", "classes-student": " (frozen teacher)",
                    "spatial": " (fixed batch)"}.get(sweep, "")
            fig.suptitle(f"{op}: {kind} vs {sweep}{what} ({device})")
            fig.tight_layout()
            path = folder / f"{op}_{kind}_vs_{sweep}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            written.append(path)
    return written


def by_group(rows):
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    return groups.items()


def training_tables(rows, paper_iterations=80_000) -> list[str]:
    """Iterations per second of each training variant, its ratio to the authors' loop, and one paper run's wall time;
    compile time, where a variant compiles, separately."""
    out = []
    for group, items in by_group(rows):
        def seconds_per_iteration(r):
            return r["stats"]["median"] / r["extra_info"]["iterations_per_round"]
        base = next((seconds_per_iteration(r) for r in items if r["extra_info"]["variant"] == "authors-eager"), None)
        gpu = items[0]["extra_info"].get("gpu")
        out += ["", f"{group}" + (f" ({gpu})" if gpu else ""),
                f"| variant | s / iteration | iterations / s | x authors' loop | {paper_iterations:,} iterations | "
                f"set-up (compile, capture) s |", "|---|---|---|---|---|---|"]
        for r in sorted(items, key=seconds_per_iteration, reverse=True):
            spi = seconds_per_iteration(r)
            setup = r["extra_info"].get("setup_s")
            out.append(f"| {r['extra_info']['variant']} | {spi:.4f} | {1 / spi:.2f} | "
                       f"{f'{base / spi:.2f}' if base else '-'} | {spi * paper_iterations / 3600:.1f} h | "
                       f"{f'{setup:.1f}' if setup is not None else '-'} |")
    return out


def transition_curve_tables(rows) -> list[str]:
    """Seconds per image of each method and the batched speed-up (the per-image loop may time fewer images)."""
    out = []
    for group, items in by_group(rows):
        def per_image(r):
            return r["stats"]["median"] / r["extra_info"]["images"]
        base = next((per_image(r) for r in items if r["extra_info"]["method"] == "per-image loop"), None)
        out += ["", f"{group}", "| method | images timed | seconds | seconds / image | speed-up |",
                "|---|---|---|---|---|"]
        for r in sorted(items, key=per_image, reverse=True):
            out.append(f"| {r['extra_info']['method']} | {r['extra_info']['images']} | {r['stats']['median']:.2f} | "
                       f"{per_image(r):.4f} | {f'{base / per_image(r):.1f}' if base else '-'} |")
    return out


def synthesis_tables(rows) -> list[str]:
    """The pool methods' per-step costs (benchmarks/bench_synthesis.py) and what a published round of each costs."""
    published = {"fast": 5, "deepinversion": 1000}  # synthesis steps per published round, each with 400 student steps
    out = []
    for group, items in by_group(rows):
        out += ["", group, "| what | s / step | set-up (compile) s |", "|---|---|---|"]
        for r in items:
            e = r["extra_info"]
            setup = e.get("setup_s")
            out.append(f"| {e.get('pool_method') or e.get('pool_variant')} | {r['stats']['median']:.4f} | "
                       f"{f'{setup:.1f}' if setup is not None else '-'} |")
    steps = {(r["extra_info"]["point"], r["extra_info"].get("pool_method") or r["extra_info"].get("pool_variant")):
             r["stats"]["median"] for r in rows}
    for point in sorted({p for p, _ in steps}):
        student = steps.get((point, "eager"))
        for method, n in published.items():
            synthesis = steps.get((point, method))
            if student is not None and synthesis is not None:
                out.append(f"{point}: a published {method} round ({n} synthesis + 400 student steps, eager) "
                           f"{n * synthesis + 400 * student:.1f} s")
    return out


def report(data) -> list[str]:
    rows = data["benchmarks"]
    lines = header(data)
    peak = copy_bandwidth(rows)
    if peak:
        lines.append(f"copy bandwidth (read + write): {peak:.1f} GB/s")
    train = [r for r in rows if "variant" in r["extra_info"]]
    mte = [r for r in rows if "method" in r["extra_info"]]
    pool = [r for r in rows if "point" in r["extra_info"]]
    return (lines + (training_tables(train) if train else []) + (transition_curve_tables(mte) if mte else [])
            + (synthesis_tables(pool) if pool else []) + op_tables(rows, peak))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="draw the speed and memory plots into DIR")
    args = parser.parse_args(argv)
    for path in args.json:
        data = load(path)
        print(f"\n# {path}")
        print("\n".join(report(data)))
        if args.plots:
            for written in draw_plots(data["benchmarks"], args.plots):
                print(f"plot: {written}")


if __name__ == "__main__":
    main()
