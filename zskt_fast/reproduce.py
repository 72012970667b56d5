"""python -m zskt_fast.reproduce: the paper's comparison for one teacher/student pair on one data set, as one report.

Teacher accuracy; the student trained from scratch on the full data; zero-shot knowledge transfer (Algorithm 1);
few-shot KD+AT for a list of M images per class and with the full data; each over several seeds, mean ± std. Then the
mean transition error and transition curves of the zero-shot student and of the KD+AT students (the first seed's),
each against the teacher. Every run is cached in the report folder: a re-run after an interruption continues from
there (finished runs are kept, interrupted ones resumed); --force runs everything again.

Report folder: report.md (tables), accuracy_vs_shots.png, transition_curves.png, results.json, and runs/ (every run's
own folder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from ._cli import errors_as_messages, program_parser
from .common import check_count, check_positive, resolve_device, writable_folder
from .data import DATASETS, DEFAULT_DATA_ROOT, evaluation_loader
from .engine.checkpoint import load_classifier, load_file, recorded_normalisation
from .engine.config import (COMPILE_CHOICES, DATA_ROOT_HELP, DATASET_DEFAULTS, FewShotConfig, PretrainConfig,
                            TrainConfig)
from .engine.evaluation import evaluate
from .engine.fewshot import train_kd_at
from .engine.teachers import pretrain_teacher
from .engine.trainer import find_teacher, pretrain_cached_teacher, train
from .engine.transition_curves import transition_curves
from .models import architecture_key
from .mte import plot_curves

DEFAULT_SHOTS = (1, 2, 5, 10, 20)
DEFAULT_SEEDS = (0, 1, 2)
# MTE images N per data set: digits has 397 test images (300 as python -m zskt_fast.mte takes); the others take the
# paper's 1,000.
MTE_IMAGES = {"digits": 300}


def build_parser() -> argparse.ArgumentParser:
    p = program_parser(
        "reproduce",
        "The paper's comparison (Micaelli & Storkey, 2019, Tables 1 and 2) for one teacher/student pair: "
        "teacher, student from scratch, zero-shot, few-shot KD+AT for several M and with full data, over "
        "several seeds; then MTE and transition curves. Writes report.md, accuracy_vs_shots.png, "
        "transition_curves.png and results.json to --out. With no options: the digits pair of "
        "`python -m zskt_fast.train`, offline.")
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="data set")
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help=DATA_ROOT_HELP)
    p.add_argument("--download", action="store_true", help="download the data set into --data-root")
    p.add_argument("--teacher", default=None, help="teacher architecture; default: the data set's, as train's")
    p.add_argument("--student", default=None, help="student architecture; default: the data set's, as train's")
    p.add_argument("--teacher-ckpt", default=None, help="teacher weights; default: the cached pretrained teacher")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="seeds of every method")
    p.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS),
                   help="M images per class of the few-shot KD+AT runs (the paper's CIFAR-10 runs: 10 25 50 75 100)")
    p.add_argument("--iterations", type=int, default=None,
                   help="zero-shot iterations; default: train's for the data set (digits 800, CIFAR-10 80,000)")
    p.add_argument("--fewshot-iterations", type=int, default=None,
                   help="KD+AT steps of every run; default: as many as full-data training (digits 330)")
    p.add_argument("--scratch-epochs", type=int, default=None,
                   help="epochs of the student trained from scratch; default: pretraining's (digits 30)")
    p.add_argument("--mte-images", type=int, default=None,
                   help="N test images of the transition curves; default 300 on digits, 1,000 (the paper's) otherwise")
    p.add_argument("--mte-steps", type=int, default=100, help="K gradient steps per trajectory (the paper's 100)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="auto", help="the zero-shot steps' torch.compile "
                                                                              "mode, as train's")
    p.add_argument("--out", default=None, help="report folder; default reports/DATASET-TEACHER-STUDENT")
    p.add_argument("--force", action="store_true", help="run everything again instead of keeping finished runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


class Report:
    """The runs of one report folder: each finished run is kept (its summary read back), each interrupted one
    resumed, unless forced."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        teacher, student, iterations = DATASET_DEFAULTS[args.dataset][:3]
        self.teacher = architecture_key(args.teacher or teacher)
        self.student = architecture_key(args.student or student)
        self.iterations = args.iterations or iterations
        for name in ("iterations", "fewshot_iterations", "scratch_epochs", "mte_images", "mte_steps"):
            if getattr(args, name) is not None:
                check_count(getattr(args, name), name)
        for m in args.shots:
            check_count(m, "shots")
        if len(set(args.seeds)) != len(args.seeds) or len(set(args.shots)) != len(args.shots):
            raise ValueError(f"--seeds and --shots take distinct values, got {args.seeds} and {args.shots}")
        self.out = Path(args.out or f"reports/{args.dataset}-{self.teacher}-{self.student}".replace(":", "-"))
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

    # -- the methods ---------------------------------------------------------------------------------------------------
    def teacher_file(self) -> str:
        probe = TrainConfig(dataset=self.args.dataset, data_root=self.args.data_root, teacher=self.teacher,
                            teacher_ckpt=self.args.teacher_ckpt, device=self.args.device).resolved()
        path, pretrain_first = find_teacher(probe)
        if pretrain_first:
            pretrain_cached_teacher(probe, path, self.progress)
        return path

    def scratch(self, seed: int) -> dict:
        folder = self.runs / "scratch" / f"seed{seed}"
        if self._fresh(folder, folder / "summary.json"):
            config = PretrainConfig(dataset=self.args.dataset, arch=self.student, data_root=self.args.data_root,
                                    download=self.args.download, epochs=self.args.scratch_epochs, seed=seed,
                                    device=self.args.device)
            print(f"student from scratch, seed {seed}")
            result = pretrain_teacher(config, writable_folder(folder) / "student.pt", progress=self.progress)
            (folder / "summary.json").write_text(json.dumps({"student_acc": result["test_acc"],
                                                             "seconds": result["seconds"], "seed": seed}, indent=2))
        return json.loads((folder / "summary.json").read_text())

    def zero_shot(self, seed: int, teacher_path: str) -> dict:
        folder = self.runs / "zero-shot" / f"seed{seed}"
        if self._fresh(folder, folder / "summary.json"):
            resume = (folder / "checkpoint.pt").is_file()
            print(f"zero-shot, seed {seed}" + (" (resumed)" if resume else ""))
            config = TrainConfig(dataset=self.args.dataset, data_root=self.args.data_root, teacher=self.teacher,
                                 student=self.student, teacher_ckpt=teacher_path, iterations=self.iterations,
                                 seed=seed, device=self.args.device, compile=self.args.compile, tensorboard=False)
            train(None if resume else config, folder, resume=resume, progress=self.progress, overwrite=True)
        return json.loads((folder / "summary.json").read_text())

    def kd_at(self, shots: str, seed: int, teacher_path: str) -> dict:
        folder = self.runs / f"kd-at-{shots}" / f"seed{seed}"
        if self._fresh(folder, folder / "summary.json"):
            resume = (folder / "checkpoint.pt").is_file()
            print(f"KD+AT, M = {shots}, seed {seed}" + (" (resumed)" if resume else ""))
            config = FewShotConfig(samples_per_class=shots, dataset=self.args.dataset, data_root=self.args.data_root,
                                   teacher=self.teacher, student=self.student, teacher_ckpt=teacher_path,
                                   iterations=self.args.fewshot_iterations, seed=seed, device=self.args.device)
            train_kd_at(config, folder, resume=resume, overwrite=True, progress=self.progress)
        return json.loads((folder / "summary.json").read_text())

    def curves(self, name: str, student_path: Path, teacher, loader, device) -> dict:
        folder = self.runs / "mte"
        safe = f"{name}-N{self.mte_images}-K{self.args.mte_steps}".replace(" ", "_").replace("=", "")
        done = folder / f"{safe}.json"
        if self._fresh(folder / f"{safe}.npz", done):
            student = load_classifier(student_path, None, num_classes=self.num_classes, in_channels=self.channels,
                                      what=name).to(device)
            start = time.perf_counter()
            # A weak student (M = 1) may agree with the teacher on fewer test images than N: it gets those.
            curves = transition_curves(student, teacher, loader, n_images=self.mte_images, steps=self.args.mte_steps,
                                       device=device, progress=self.progress, allow_fewer=True)
            writable_folder(folder)
            curves.save(folder / f"{safe}.npz")
            mean_a, mean_b = curves.mean_curves()
            done.write_text(json.dumps({"mte": curves.mte, "mean_a": mean_a.tolist(), "mean_b": mean_b.tolist(),
                                        "images": len(curves.sources), "seconds": time.perf_counter() - start},
                                       indent=2))
        return json.loads(done.read_text())

    # -- the whole comparison ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        self.mte_images = args.mte_images or MTE_IMAGES.get(args.dataset, 1000)
        writable_folder(self.out, "report folder")
        teacher_path = self.teacher_file()
        teacher_record = load_file(teacher_path)
        normalisation = recorded_normalisation(teacher_record)
        loader = evaluation_loader(args.dataset, root=args.data_root, download=args.download,
                                   normalisation=normalisation)
        device = torch.device(resolve_device(args.device))
        probe = TrainConfig(dataset=args.dataset, data_root=args.data_root, teacher=self.teacher,
                            device=args.device).resolved()
        self.num_classes, self.channels = probe.num_classes, probe.channels
        teacher = load_classifier(teacher_path, self.teacher, num_classes=self.num_classes, in_channels=self.channels,
                                  what="teacher").to(device)
        teacher_acc = evaluate(teacher, loader, device)

        methods = {"scratch": [self.scratch(seed) for seed in args.seeds],
                   "zero-shot": [self.zero_shot(seed, teacher_path) for seed in args.seeds]}
        for m in args.shots:
            methods[f"kd-at-{m}"] = [self.kd_at(str(m), seed, teacher_path) for seed in args.seeds]
        methods["kd-at-all"] = [self.kd_at("all", seed, teacher_path) for seed in args.seeds]

        first = f"seed{args.seeds[0]}"
        curve_students = {"zero-shot": self.runs / "zero-shot" / first / "student.pt"}
        curve_students.update({f"KD+AT M={m}": self.runs / f"kd-at-{m}" / first / "student.pt" for m in args.shots})
        curve_students["KD+AT full data"] = self.runs / "kd-at-all" / first / "student.pt"
        mte = {name: self.curves(name, path, teacher, loader, device) for name, path in curve_students.items()}
        return self._results(teacher_acc, teacher_path, methods, mte)

    def _results(self, teacher_acc: float, teacher_path: str, methods: dict, mte: dict) -> dict:
        rows = []
        for key, runs in methods.items():
            accuracy = _mean_std([r["student_acc"] for r in runs])
            shots = 0 if key == "zero-shot" else "all" if key in ("scratch", "kd-at-all") else int(key.split("-")[-1])
            rows.append({"key": key, "method": _label(key), "samples_per_class": shots,
                         "accuracy_mean": accuracy[0], "accuracy_std": accuracy[1],
                         "accuracies": [r["student_acc"] for r in runs],
                         "seconds_mean": statistics.fmean(r["seconds"] for r in runs)})
        return {"dataset": self.args.dataset, "teacher": self.teacher, "student": self.student,
                "teacher_ckpt": teacher_path, "teacher_acc": teacher_acc, "seeds": self.args.seeds,
                "shots": self.args.shots, "zero_shot_iterations": self.iterations,
                "fewshot_iterations": methods["kd-at-all"][0]["iterations"], "mte_images": self.mte_images,
                "mte_steps": self.args.mte_steps, "methods": rows,
                "mte": [{"method": name, "mte": value["mte"], "images": value["images"], "mean_a": value["mean_a"],
                         "mean_b": value["mean_b"], "seconds": value["seconds"]} for name, value in mte.items()],
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                           f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
                "date": time.strftime("%Y-%m-%d"), "kept": self.kept, "ran": self.ran}


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
    (out / "results.json").write_text(json.dumps(results, indent=2))
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
    (out / "report.md").write_text("\n".join(lines))
    _plot_accuracy(results, out / "accuracy_vs_shots.png")
    _plot_curves(results, out / "transition_curves.png")


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
    fig.savefig(path)
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
    with errors_as_messages(parser, interrupted="run the same command again to continue where it stopped"):
        if args.mte_steps is not None:
            check_positive(args.mte_steps, "mte_steps")
        report = Report(args)
        results = report.run()
        results["seconds"] = time.perf_counter() - start
        write_report(results, report.out)
    print((report.out / "report.md").read_text())
    print(f"written to {report.out} in {results['seconds']:.0f} s ({len(report.ran)} runs made, "
          f"{len(report.kept)} kept from before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
