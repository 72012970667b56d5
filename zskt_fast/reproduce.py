"""python -m zskt_fast.reproduce: the paper's comparison for one teacher/student pair on one data set, as one report.

Teacher accuracy; the student trained from scratch on the full data; zero-shot knowledge transfer (Algorithm 1);
few-shot KD+AT for a list of M images per class and with the full data; each over several seeds, mean ± std. Then the
mean transition error and transition curves of the zero-shot student and of the KD+AT students (the first seed's),
each against the teacher. Every run is cached in the report folder: a re-run after an interruption continues from
there (finished runs are kept, interrupted ones resumed); --force runs everything again.

The methods section runs each data-free method (ZSKT, DFAD, DAFL, DFQ, FastDFKD, DeepInversion: their presets) over
the seeds and reports the student's accuracy against wall-clock seconds; --methods-only runs just that part.

Report folder: report.md (tables), accuracy_vs_shots.png, transition_curves.png, results.json, methods.md,
accuracy_vs_seconds.png, methods.json, and runs/ (every run's own folder).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from ._cli import add_options, errors_as_messages, program_parser, settings_from_args
from .common import atomic_write, atomic_write_text, left_as_found, writable_folder
from .data import dataset_info, evaluation_loader
from .engine.lifecycle.checkpoint import load_classifier, load_file, recorded_normalisation
from .engine.settings.config import FewShotConfig, PretrainConfig, ReproduceConfig, TrainConfig
from .engine.lifecycle.evaluation import evaluate
from .engine.methods.registry import METHODS
from .engine.experiments.fewshot import train_kd_at
from .engine.lifecycle.run import RunInterrupted
from .engine.settings.parts import ALGORITHM, DATA, OUTPUTS, SPEED
from .engine.experiments.supervised import train_supervised
from .engine.experiments.time_to_accuracy import methods_table, summarise_methods
from .engine.teachers import find_teacher, pretrain_missing_teacher
from .engine.trainer import train
from .engine.experiments.transition_curves import transition_curves
from .mte import plot_curves

DEFAULT_SEEDS = (0, 1, 2)
# Settings whose defaults are each method's own: the methods section passes them only when given.
METHOD_DEFAULTS = ("batch_size", "z_dim", "temperature", "iterations", "n_generator_steps", "n_student_steps")


def build_parser() -> argparse.ArgumentParser:
    p = program_parser(
        "reproduce",
        "The paper's comparison (Micaelli & Storkey, 2019, Tables 1 and 2) for one teacher/student pair: "
        "teacher, student from scratch, zero-shot, few-shot KD+AT for several M and with full data, over "
        "several seeds; then MTE and transition curves. Writes report.md, accuracy_vs_shots.png, "
        "transition_curves.png and results.json to --out. With no options: the digits pair of "
        "`python -m zskt_fast.train`, offline. The zero-shot runs take train's options.")
    groups = add_options(p, ReproduceConfig, skip=("seed",), group_order=(DATA, ALGORITHM, SPEED, OUTPUTS))
    groups[ALGORITHM].add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                                   help="seeds of every method")
    groups[OUTPUTS].add_argument("--out", default=None, help="report folder; default reports/DATASET-TEACHER-STUDENT")
    groups[OUTPUTS].add_argument("--force", action="store_true",
                                 help="run everything again instead of keeping finished runs")
    groups[OUTPUTS].add_argument("--methods-only", action="store_true",
                                 help="only the methods section: each of --methods over --seeds, the student's test "
                                      "accuracy against wall-clock seconds (methods.md, accuracy_vs_seconds.png, "
                                      "methods.json)")
    groups[OUTPUTS].add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


class Report:
    """The runs of one report folder: each finished run is kept (its summary read back), each interrupted one
    resumed, unless forced."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.config = settings_from_args(ReproduceConfig, args).resolved()
        if len(set(args.seeds)) != len(args.seeds):
            raise ValueError(f"--seeds and --shots take distinct values, got {args.seeds} and "
                             f"{self.config.comparison.shots}")
        data, networks = self.config.data, self.config.networks
        self.teacher, self.student = networks.teacher, networks.student
        self.out = Path(args.out or f"reports/{data.dataset}-{self.teacher}-{self.student}".replace(":", "-"))
        self.runs = self.out / "runs"
        self.progress = not args.no_progress
        self.kept, self.ran = [], []
        self.cleared: set[Path] = set()  # folders --force has emptied in this invocation

    def _fresh(self, folder: Path, done: Path) -> bool:
        """Whether a run must (still) be made: forced, or its result `done` is missing."""
        if self.args.force and folder.exists() and folder not in self.cleared:
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
            self.cleared.add(folder)
        if done.is_file():
            self.kept.append(str(folder.relative_to(self.out)))
            return False
        self.ran.append(str(folder.relative_to(self.out)))
        return True

    def _shared(self) -> dict:
        """The settings every method's run takes from this report's."""
        config = self.config
        return {**dataclasses.asdict(config.data), "device": config.run.device}

    # -- the methods ---------------------------------------------------------------------------------------------------
    def teacher_file(self) -> str:
        path, must_pretrain = find_teacher(self.config.data, self.config.networks)
        if must_pretrain:
            pretrain_missing_teacher(self.config.networks, self.config.run, path, self.progress)
        return path

    def scratch(self, seed: int) -> dict:
        folder = self.runs / "scratch" / f"seed{seed}"
        if self._fresh(folder, folder / "summary.json"):
            config = PretrainConfig.from_flat({**self._shared(), "arch": self.student, "seed": seed,
                                               "epochs": self.config.comparison.scratch_epochs})
            print(f"student from scratch, seed {seed}")
            result = train_supervised(config, writable_folder(folder) / "student.pt", progress=self.progress)
            atomic_write_text(folder / "summary.json", json.dumps({"student_acc": result["test_acc"],
                                                                   "seconds": result["seconds"], "seed": seed},
                                                                  indent=2))
        return json.loads((folder / "summary.json").read_text())

    def zero_shot(self, seed: int, teacher_path: str) -> dict:
        folder = self.runs / "zero-shot" / f"seed{seed}"
        if self._fresh(folder, folder / "summary.json"):
            resume = (folder / "checkpoint.pt").is_file()
            print(f"zero-shot, seed {seed}" + (" (resumed)" if resume else ""))
            config = self.config
            values = {**self._shared(), **dataclasses.asdict(config.networks), **dataclasses.asdict(config.steps),
                      **dataclasses.asdict(config.loop), "teacher_ckpt": teacher_path, "seed": seed,
                      "tensorboard": False}
            train(None if resume else TrainConfig.from_flat(values), folder, resume=resume, progress=self.progress,
                  overwrite=True)
        return json.loads((folder / "summary.json").read_text())

    def kd_at(self, shots: str, seed: int, teacher_path: str) -> dict:
        folder = self.runs / f"kd-at-{shots}" / f"seed{seed}"
        if self._fresh(folder, folder / "summary.json"):
            resume = (folder / "checkpoint.pt").is_file()
            print(f"KD+AT, M = {shots}, seed {seed}" + (" (resumed)" if resume else ""))
            config = FewShotConfig.from_flat({**self._shared(), "teacher": self.teacher, "student": self.student,
                                              "teacher_ckpt": teacher_path,
                                              "samples_per_class": shots, "seed": seed,
                                              "iterations": self.config.comparison.fewshot_iterations})
            train_kd_at(config, folder, resume=resume, overwrite=True, progress=self.progress)
        return json.loads((folder / "summary.json").read_text())

    def method_run(self, method: str, seed: int, teacher_path: str) -> dict:
        """One run of a data-free method with its preset (the batch, noise size, temperature, length, n_G and n_S
        too, unless given) and this report's other settings, tested every methods_eval_every iterations (the pool
        methods: every round)."""
        folder = self.runs / "methods" / method / f"seed{seed}"
        if self._fresh(folder, folder / "summary.json"):
            resume = (folder / "checkpoint.pt").is_file()
            print(f"method {method}, seed {seed}" + (" (resumed)" if resume else ""))
            config = self.config
            values = {**self._shared(), **dataclasses.asdict(config.networks), **dataclasses.asdict(config.steps),
                      **dataclasses.asdict(config.loop), "teacher_ckpt": teacher_path, "seed": seed,
                      "tensorboard": False, "method": method,
                      **{name: getattr(self.args, name) for name in METHOD_DEFAULTS},
                      "eval_every": None if METHODS[method].strategy.evaluates_every_round
                      else config.comparison.methods_eval_every}
            train(None if resume else TrainConfig.from_flat(values), folder, resume=resume, progress=self.progress,
                  overwrite=True)
        return json.loads((folder / "summary.json").read_text())

    def methods_section(self, teacher_path: str) -> dict:
        """Every method over every seed (seeds outermost: an interrupted report has the early seeds of all methods),
        summarised as the methods table and curves."""
        methods, seeds = self.config.comparison.methods, self.args.seeds
        runs = {method: [] for method in methods}
        for seed in seeds:
            for method in methods:
                runs[method].append(self.method_run(method, seed, teacher_path))
        return summarise_methods(runs)

    def run_methods(self) -> dict:
        """The methods section alone."""
        writable_folder(self.out, "report folder")
        section = self.methods_section(self.teacher_file())
        return {"dataset": self.config.data.dataset, "teacher": self.teacher, "student": self.student,
                "seeds": self.args.seeds, "iterations": self.config.loop.iterations, "machine": _machine(),
                "date": time.strftime("%Y-%m-%d"), "methods_section": section, "kept": self.kept, "ran": self.ran}

    def curves(self, name: str, student_path: Path, teacher, loader, device) -> dict:
        folder = self.runs / "mte"
        comparison = self.config.comparison
        safe = f"{name}-N{comparison.mte_images}-K{comparison.mte_steps}".replace(" ", "_").replace("=", "")
        done = folder / f"{safe}.json"
        if self._fresh(folder / f"{safe}.npz", done):
            data = self.config.data
            student = load_classifier(student_path, None, num_classes=self.num_classes, in_channels=data.channels,
                                      what=name).to(device)
            start = time.perf_counter()
            # A weak student (M = 1) may agree with the teacher on fewer test images than N: it gets those.
            curves = transition_curves(student, teacher, loader, n_images=comparison.mte_images,
                                       steps=comparison.mte_steps, device=device, progress=self.progress,
                                       allow_fewer=True)
            writable_folder(folder)
            curves.save(folder / f"{safe}.npz")
            mean_a, mean_b = curves.mean_curves()
            atomic_write_text(done, json.dumps({"mte": curves.mte, "mean_a": mean_a.tolist(),
                                                "mean_b": mean_b.tolist(), "images": len(curves.sources),
                                                "seconds": time.perf_counter() - start}, indent=2))
        return json.loads(done.read_text())

    # -- the whole comparison ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        seeds, shots, data = self.args.seeds, self.config.comparison.shots, self.config.data
        writable_folder(self.out, "report folder")
        teacher_path = self.teacher_file()
        normalisation = recorded_normalisation(load_file(teacher_path))
        loader = evaluation_loader(data.dataset, root=data.data_root, download=data.download,
                                   normalisation=normalisation)
        device = torch.device(self.config.run.device)
        self.num_classes = dataset_info(data.dataset, root=data.data_root).num_classes
        teacher = load_classifier(teacher_path, self.teacher, num_classes=self.num_classes, in_channels=data.channels,
                                  what="teacher").to(device)
        teacher_acc = evaluate(teacher, loader, device)

        methods = {"scratch": [self.scratch(seed) for seed in seeds],
                   "zero-shot": [self.zero_shot(seed, teacher_path) for seed in seeds]}
        for m in shots:
            methods[f"kd-at-{m}"] = [self.kd_at(str(m), seed, teacher_path) for seed in seeds]
        methods["kd-at-all"] = [self.kd_at("all", seed, teacher_path) for seed in seeds]

        first = f"seed{seeds[0]}"
        curve_students = {"zero-shot": self.runs / "zero-shot" / first / "student.pt"}
        curve_students.update({f"KD+AT M={m}": self.runs / f"kd-at-{m}" / first / "student.pt" for m in shots})
        curve_students["KD+AT full data"] = self.runs / "kd-at-all" / first / "student.pt"
        mte = {name: self.curves(name, path, teacher, loader, device) for name, path in curve_students.items()}
        results = self._results(teacher_acc, teacher_path, methods, mte)
        results["methods_section"] = self.methods_section(teacher_path)
        return results

    def _results(self, teacher_acc: float, teacher_path: str, methods: dict, mte: dict) -> dict:
        rows = []
        for key, runs in methods.items():
            accuracy = _mean_std([r["student_acc"] for r in runs])
            shots = 0 if key == "zero-shot" else "all" if key in ("scratch", "kd-at-all") else int(key.split("-")[-1])
            rows.append({"key": key, "method": _label(key), "samples_per_class": shots,
                         "accuracy_mean": accuracy[0], "accuracy_std": accuracy[1],
                         "accuracies": [r["student_acc"] for r in runs],
                         "seconds_mean": statistics.fmean(r["seconds"] for r in runs)})
        comparison = self.config.comparison
        return {"dataset": self.config.data.dataset, "teacher": self.teacher, "student": self.student,
                "teacher_ckpt": teacher_path, "teacher_acc": teacher_acc, "seeds": self.args.seeds,
                "shots": comparison.shots, "zero_shot_iterations": self.config.loop.iterations,
                "fewshot_iterations": methods["kd-at-all"][0]["iterations"], "mte_images": comparison.mte_images,
                "mte_steps": comparison.mte_steps, "methods": rows,
                "mte": [{"method": name, "mte": value["mte"], "images": value["images"], "mean_a": value["mean_a"],
                         "mean_b": value["mean_b"], "seconds": value["seconds"]} for name, value in mte.items()],
                "machine": _machine(), "date": time.strftime("%Y-%m-%d"), "kept": self.kept, "ran": self.ran}


def _machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def _label(key: str) -> str:
    if key == "scratch":
        return "student from scratch (full data)"
    if key == "zero-shot":
        return "zero-shot (ours, no data)"
    if key == "kd-at-all":
        return "KD+AT, full data"
    return f"KD+AT, M = {key.split('-')[-1]}"


def write_report(results: dict, out: Path) -> None:
    """report.md, accuracy_vs_shots.png, transition_curves.png and results.json."""
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    lines = [f"# Zero-shot knowledge transfer: {results['teacher']} -> {results['student']} on {results['dataset']}",
             "",
             f"{results['machine']}; {results['date']}. Seeds {', '.join(map(str, results['seeds']))}; zero-shot "
             f"{results['zero_shot_iterations']:,} iterations; KD+AT {results['fewshot_iterations']:,} steps per run; "
             f"MTE over N = {results['mte_images']} images, K = {results['mte_steps']} steps (first seed's students).",
             "", "## Test accuracy (Table 1)", "",
             "| method | M per class | test accuracy % (mean ± std) | seconds per run |", "|---|---|---|---|",
             f"| teacher ({results['teacher']}) | all | {results['teacher_acc']:.2f} | |"]
    for row in results["methods"]:
        lines.append(f"| {row['method']} | {row['samples_per_class']} | {row['accuracy_mean']:.2f} ± "
                     f"{row['accuracy_std']:.2f} | {row['seconds_mean']:.1f} |")
    lines += ["", "## Mean transition error against the teacher (Table 2)", "",
              "| student | MTE | images N (those on which it agrees with the teacher, at most the N asked for) |",
              "|---|---|---|"]
    lines += [f"| {row['method']} | {row['mte']:.4f} | {row['images']} |" for row in results["mte"]]
    lines += ["", "![accuracy against M](accuracy_vs_shots.png)", "", "![transition curves](transition_curves.png)", ""]
    lines += methods_lines(results)
    atomic_write_text(out / "report.md", "\n".join(lines))
    _plot_accuracy(results, out / "accuracy_vs_shots.png")
    _plot_curves(results, out / "transition_curves.png")
    write_methods_section(results, out)


def methods_lines(results: dict) -> list[str]:
    """The methods section of the report: the table and the accuracy-against-seconds figure."""
    section = results["methods_section"]
    return ["## Data-free methods: time to a good student", "",
            f"Each method with its preset (docs/methods.md) and its length (iterations of Algorithm 1, rounds of the "
            f"pool methods), seeds {', '.join(map(str, results['seeds']))}; wall-clock seconds of each run on this "
            f"machine, evaluations included.", "", *methods_table(section), "",
            "![student accuracy against seconds](accuracy_vs_seconds.png)", ""]


def write_methods_section(results: dict, out: Path) -> None:
    """methods.md, methods.json and accuracy_vs_seconds.png."""
    header = [f"# Data-free methods: {results['teacher']} -> {results['student']} on {results['dataset']}", "",
              f"{results['machine']}; {results['date']}.", ""]
    atomic_write_text(out / "methods.md", "\n".join(header + methods_lines(results)))
    atomic_write_text(out / "methods.json", json.dumps(results["methods_section"], indent=2))
    _plot_accuracy_vs_seconds(results, out / "accuracy_vs_seconds.png")


def _plot_accuracy_vs_seconds(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section = results["methods_section"]
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=120)
    for index, (method, curve) in enumerate(section["curves"].items()):
        mean, std = curve["accuracy_mean"], curve["accuracy_std"]
        ax.plot(curve["seconds"], mean, marker=".", color=f"C{index}", label=method)
        ax.fill_between(curve["seconds"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=f"C{index}", alpha=0.2)
    ax.axhline(section["target"], color="k", linestyle="--", linewidth=1,
               label=f"{section['reference']} final accuracy ({section['target']:.2f}%)")
    ax.axvline(section["reference_seconds"], color="k", linestyle=":", linewidth=1,
               label=f"{section['reference']} wall time ({section['reference_seconds']:.0f} s)")
    ax.set_xlabel("wall-clock seconds of training (this machine)")
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title(f"{results['teacher']} -> {results['student']} on {results['dataset']}: mean ± std over "
                 f"{len(results['seeds'])} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def _plot_accuracy(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {row["key"]: row for row in results["methods"]}
    shots = results["shots"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    few = [rows[f"kd-at-{m}"] for m in shots]
    ax.errorbar(shots, [r["accuracy_mean"] for r in few], yerr=[r["accuracy_std"] for r in few], marker="o",
                capsize=3, label="few-shot KD+AT")
    zero = rows["zero-shot"]
    ax.axhspan(zero["accuracy_mean"] - zero["accuracy_std"], zero["accuracy_mean"] + zero["accuracy_std"],
               color="C1", alpha=0.25)
    ax.axhline(zero["accuracy_mean"], color="C1", label="zero-shot (no data), mean ± std")
    ax.axhline(results["teacher_acc"], color="k", linestyle="--", label=f"teacher ({results['teacher']})")
    ax.axhline(rows["kd-at-all"]["accuracy_mean"], color="C2", linestyle=":", label="KD+AT, full data")
    ax.set_xscale("log")
    ax.set_xticks(shots)
    ax.set_xticklabels([str(m) for m in shots])
    ax.set_xlabel("M, real images per class")
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title(f"{results['teacher']} -> {results['student']} on {results['dataset']}, {len(results['seeds'])} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def _plot_curves(results: dict, path: Path) -> None:
    import numpy as np

    class Curves:  # what plot_curves reads of a TransitionCurves
        def __init__(self, row):
            self.row, self.mte = row, row["mte"]

        def mean_curves(self):
            return np.array(self.row["mean_a"]), np.array(self.row["mean_b"])

    plot_curves({row["method"]: Curves(row) for row in results["mte"]}, path, f"teacher ({results['teacher']})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with errors_as_messages(parser, debug=args.debug) as ending:
        report = Report(args)
        again = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--force"]
        ending.continue_with = (" ".join([parser.prog, *map(shlex.quote, again)]) +
                                " (the finished runs are kept; an interrupted one resumes from its checkpoint)")
        with left_as_found(report.out, keep_on=(KeyboardInterrupt, RunInterrupted)):
            if args.methods_only:
                results = report.run_methods()
                write_methods_section(results, report.out)
            else:
                results = report.run()
                write_report(results, report.out)
            results["seconds"] = time.perf_counter() - start
    print((report.out / ("methods.md" if args.methods_only else "report.md")).read_text())
    print(f"written to {report.out} in {results['seconds']:.0f} s ({len(report.ran)} runs made, "
          f"{len(report.kept)} kept from before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
