"""Time to a good student: from the runs of several methods over seeds (their summaries, whose history holds the
student's test accuracy at every evaluation with the seconds of work it had taken), the methods table and the
accuracy-against-seconds curves of the report's methods section.

The target is the reference method's (ZSKT's) final accuracy, averaged over its seeds; a method reaches it at the first
evaluation whose accuracy is at least the target. Accuracy at equal time is the accuracy of a method's last evaluation
within the reference's mean wall time.
"""
from __future__ import annotations

import statistics

from ..methods.registry import METHODS


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


def seconds_to_reach(history: list[dict], target: float) -> float | None:
    """The seconds at the first evaluation with accuracy >= target, or None."""
    return next((h["seconds"] for h in history if h["student_acc"] >= target), None)


def accuracy_at(history: list[dict], seconds: float) -> float:
    """The accuracy of the last evaluation done within `seconds` (the first evaluation's when none is)."""
    within = [h for h in history if h["seconds"] <= seconds]
    return (within[-1] if within else history[0])["student_acc"]


def _unit(method: str, summary: dict) -> str:
    """What one step of the method's loop is called (runs written before summaries named it: the method's)."""
    if "unit" in summary:
        return summary["unit"]
    return METHODS[method].strategy.unit if method in METHODS else "iteration"


def summarise_methods(runs: dict[str, list[dict]], reference: str = "zskt") -> dict:
    """{"target", "reference_seconds", "rows": one per method, "curves": one per method}; `runs` maps a method to its
    seeds' summaries (each with student_acc, seconds, iterations and a history with seconds)."""
    baseline = runs.get(reference) or next(iter(runs.values()))
    target = statistics.fmean(s["student_acc"] for s in baseline)
    reference_seconds = statistics.fmean(s["seconds"] for s in baseline)
    rows, curves = [], {}
    for method, summaries in runs.items():
        final = _mean_std([s["student_acc"] for s in summaries])
        reached = [seconds_to_reach(s["history"], target) for s in summaries]
        at_reference_time = _mean_std([accuracy_at(s["history"], reference_seconds) for s in summaries])
        done = [r for r in reached if r is not None]
        rows.append({
            "method": method, "seeds": [s["seed"] for s in summaries],
            "accuracies": [s["student_acc"] for s in summaries],
            "accuracy_mean": final[0], "accuracy_std": final[1],
            "seconds_mean": statistics.fmean(s["seconds"] for s in summaries),
            "seconds_per_iteration": statistics.fmean(s["seconds"] / s["iterations"] for s in summaries),
            "length": f"{summaries[0]['iterations']:,} {_unit(method, summaries[0])}s",
            "reached": len(done), "seconds_to_target": reached,
            "seconds_to_target_mean": statistics.fmean(done) if len(done) == len(reached) else None,
            "accuracy_at_reference_time_mean": at_reference_time[0],
            "accuracy_at_reference_time_std": at_reference_time[1]})
        points = min(len(s["history"]) for s in summaries)
        curves[method] = {
            "seconds": [statistics.fmean(s["history"][i]["seconds"] for s in summaries) for i in range(points)],
            "iterations": [summaries[0]["history"][i]["iteration"] for i in range(points)],
            "accuracy_mean": [statistics.fmean(s["history"][i]["student_acc"] for s in summaries)
                              for i in range(points)],
            "accuracy_std": [statistics.pstdev(s["history"][i]["student_acc"] for s in summaries)
                             for i in range(points)]}
    return {"reference": reference, "target": target, "reference_seconds": reference_seconds, "rows": rows,
            "curves": curves}


def methods_table(section: dict) -> list[str]:
    """The markdown table of the methods section."""
    lines = [f"Target: the {section['reference']} default's final accuracy, {section['target']:.2f}% (mean over its "
             f"seeds), reached in {section['reference_seconds']:.0f} s.", "",
             "| method | length | final test accuracy % (mean ± std) | seconds to reach the target (mean; per seed) | "
             f"share of {section['reference']}'s time | accuracy % at {section['reference_seconds']:.0f} s | "
             "seconds per iteration (round) | seconds per run |",
             "|---|---|---|---|---|---|---|---|"]
    for row in section["rows"]:
        per_seed = ", ".join("–" if s is None else f"{s:.0f}" for s in row["seconds_to_target"])
        reached = (f"{row['seconds_to_target_mean']:.0f} ({per_seed})" if row["seconds_to_target_mean"] is not None
                   else f"not reached by every seed ({row['reached']}/{len(row['seeds'])}: {per_seed})")
        share = (f"{row['seconds_to_target_mean'] / section['reference_seconds']:.0%}"
                 if row["seconds_to_target_mean"] is not None else "–")
        lines.append(f"| {row['method']} | {row.get('length', '')} | {row['accuracy_mean']:.2f} ± "
                     f"{row['accuracy_std']:.2f} | {reached} | {share} | "
                     f"{row['accuracy_at_reference_time_mean']:.2f} ± {row['accuracy_at_reference_time_std']:.2f} | "
                     f"{row['seconds_per_iteration']:.3f} | {row['seconds_mean']:.0f} |")
    return lines
