"""Prints the table of a pytest-benchmark JSON file: time, ratio to eager, achieved bandwidth against the floor.

    python benchmarks/report.py benchmarks/out/losses.json
"""
import json
import platform
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    rows = data["benchmarks"]
    copy = next((r for r in rows if r["extra_info"].get("backend") == "copy"), None)
    peak = copy["extra_info"]["floor_bytes"] / copy["stats"]["median"] / 1e9 if copy else None
    machine = data.get("machine_info", {})
    print(f"\nmachine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
          f"{machine.get('cpu', {}).get('count', '?')} CPUs; python {machine.get('python_version', '?')}; "
          f"date {data.get('datetime', '?')[:10]}")
    if peak:
        print(f"copy bandwidth (256 MB copy, read + write): {peak:.1f} GB/s")
    groups = defaultdict(list)
    train_rows = [r for r in rows if "variant" in r["extra_info"]]
    for r in rows:
        if "backend" in r["extra_info"] and r["extra_info"]["backend"] != "copy":
            groups[r["group"]].append(r)
    if train_rows:
        report_training(train_rows)
    mte_rows = [r for r in rows if "method" in r["extra_info"]]
    if mte_rows:
        report_transition_curves(mte_rows)
    for group, items in groups.items():
        eager = next((r["stats"]["median"] for r in items if r["extra_info"]["backend"] == "eager"), None)
        print(f"\n{group}")
        print("| backend | median ms | min ms | x eager | GB/s at floor | % of copy bandwidth |")
        print("|---|---|---|---|---|---|")
        for r in sorted(items, key=lambda r: r["stats"]["median"], reverse=True):
            median, floor = r["stats"]["median"], r["extra_info"]["floor_bytes"]
            gbps = floor / median / 1e9
            ratio = f"{eager / median:.2f}" if eager else "-"
            share = f"{100 * gbps / peak:.0f}%" if peak else "-"
            print(f"| {r['extra_info']['backend']} | {median * 1e3:.2f} | {r['stats']['min'] * 1e3:.2f} | {ratio} | "
                  f"{gbps:.1f} | {share} |")


def by_group(rows):
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    return groups.items()


def report_training(rows, paper_iterations=80_000):
    """Iterations per second of each training variant, its ratio to the authors' loop, and one paper run's wall time."""
    for group, items in by_group(rows):
        def seconds_per_iteration(r):
            return r["stats"]["median"] / r["extra_info"]["iterations_per_round"]
        base = next((seconds_per_iteration(r) for r in items if r["extra_info"]["variant"] == "authors-eager"), None)
        gpu = items[0]["extra_info"].get("gpu")
        print(f"\n{group}" + (f" ({gpu})" if gpu else ""))
        print(f"| variant | s / iteration | iterations / s | x authors' loop | {paper_iterations:,} iterations |")
        print("|---|---|---|---|---|")
        for r in sorted(items, key=seconds_per_iteration, reverse=True):
            spi = seconds_per_iteration(r)
            ratio = f"{base / spi:.2f}" if base else "-"
            print(f"| {r['extra_info']['variant']} | {spi:.4f} | {1 / spi:.2f} | {ratio} | "
                  f"{spi * paper_iterations / 3600:.1f} h |")


def report_transition_curves(rows):
    """Seconds per image of each method and the batched speed-up (the per-image loop may time fewer images)."""
    for group, items in by_group(rows):
        def per_image(r):
            return r["stats"]["median"] / r["extra_info"]["images"]
        base = next((per_image(r) for r in items if r["extra_info"]["method"] == "per-image loop"), None)
        print(f"\n{group}")
        print("| method | images timed | seconds | seconds / image | speed-up |")
        print("|---|---|---|---|---|")
        for r in sorted(items, key=per_image, reverse=True):
            ratio = f"{base / per_image(r):.1f}" if base else "-"
            print(f"| {r['extra_info']['method']} | {r['extra_info']['images']} | {r['stats']['median']:.2f} | "
                  f"{per_image(r):.4f} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/losses.json")
