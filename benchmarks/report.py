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
    for r in rows:
        if r["extra_info"].get("backend") != "copy":
            groups[r["group"]].append(r)
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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/losses.json")
