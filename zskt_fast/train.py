"""python -m zskt_fast.train: zero-shot knowledge transfer (Algorithm 1), with no data seen by the student.

With no arguments: the offline default, handwritten digits from scikit-learn, a WRN-16-2 teacher (pretrained and cached
on first use) distilled into a WRN-16-1 student.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ._cli import HelpFormatter, add_options, errors_as_messages, settings_from_args
from .engine.checkpoint import CheckpointError
from .engine.config import ALGORITHM, DATA, OUTPUTS, SPEED, TrainConfig
from .common import writable_folder
from .data import dataset_info
from .models import architecture_key, build_classifier, describe_network_nodes
from .engine.trainer import RunInterrupted, check_run, check_run_folder, train

RUN_INDEX = "run.json"  # in the parent folder: the settings of every seed, for --resume of the whole run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zskt_fast.train",
        description="Zero-shot knowledge transfer (Micaelli & Storkey, 2019): a generator searches for images on which "
                    "the student and the frozen teacher disagree, the student learns to agree with the teacher on "
                    "them. The data set is only used to test the student (and to pretrain a digits teacher). "
                    "Each seed writes a run folder: config.json, metrics.jsonl, checkpoint.pt, images/, student.pt, "
                    "generator.pt and summary.json.",
        formatter_class=HelpFormatter)
    groups = add_options(p, TrainConfig, skip=("seed",), group_order=(DATA, ALGORITHM, SPEED, OUTPUTS))
    groups[ALGORITHM].add_argument("--seeds", type=int, nargs="+", default=[TrainConfig.seed],
                                   help="run once per seed; with several, report mean ± std (population std) like "
                                        "the paper")
    out = groups[OUTPUTS]
    out.add_argument("--out", default=None,
                     help="output folder (one seedN subfolder per seed); default runs/DATASET-TEACHER-STUDENT-TIME")
    out.add_argument("--resume", default=None, metavar="RUN_DIR",
                     help="continue a killed or interrupted run from its last checkpoint, with its saved settings (no "
                          "other option may be given): a seedN folder continues that seed, the folder holding the "
                          "seedN folders continues every unfinished seed and then writes the mean ± std summary")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the run files in --out (by default a folder holding a run is refused)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-nodes", default=None, metavar="ARCH",
                   help="print the nodes of architecture ARCH that --attention-layers can name (modules with feature "
                        "map outputs and their shapes, on the images of --dataset / --image-size), and exit")
    return p


def list_nodes(arch: str, args: argparse.Namespace) -> str:
    info = dataset_info(args.dataset, image_size=args.image_size, channels=args.channels)
    net = build_classifier(arch, args.num_classes or info.num_classes or 10, info.channels)
    shape = (info.channels, info.image_size, info.image_size)
    return (f"{architecture_key(arch)} on {'x'.join(map(str, shape))} images ({args.dataset}):\n" +
            describe_network_nodes(net, shape))


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def _options_given(parser: argparse.ArgumentParser, args: argparse.Namespace, allowed: set[str]) -> list[str]:
    """The options set to something other than their default, except `allowed` (destinations)."""
    return [action.option_strings[0] for action in parser._actions
            if action.option_strings and action.dest not in allowed and action.dest != "help"
            and getattr(args, action.dest) != action.default]


def _plan(args: argparse.Namespace) -> tuple[Path, list[tuple[TrainConfig | None, Path, bool]]]:
    """(the parent folder, [(config, seed folder, resume)]) for a new run or for --resume: a seedN folder continues
    that seed; a parent folder continues each unfinished seed of its run.json (starting those that never wrote a
    checkpoint) and keeps the finished ones."""
    if not args.resume:
        # every setting of every seed checked before any work
        configs = [settings_from_args(TrainConfig, args, seed=seed).resolved() for seed in args.seeds]
        first = configs[0]
        out = Path(args.out or f"runs/{first.dataset}-{first.teacher}-{first.student}-"
                               f"{time.strftime('%Y%m%d-%H%M%S')}")
        plan = [(config, out / f"seed{config.seed}", False) for config in configs]
        # Nothing is created before the checks pass. The seeds share data, networks and teacher: one check_run covers
        # them all (it reads the data set and the teacher file).
        check_run(first)
        for _, folder, _ in plan:
            check_run_folder(folder, overwrite=args.overwrite, create=False)
        writable_folder(out)
        (out / RUN_INDEX).write_text(json.dumps({"seeds": [c.to_dict() for c in configs]}, indent=2))
        return out, plan
    folder = Path(args.resume)
    if (folder / "config.json").is_file():
        return folder.parent, [(None, folder, True)]
    if not (folder / RUN_INDEX).is_file():
        raise CheckpointError(f"cannot resume {folder}: no config.json there (the seedN folder of a run), nor the "
                              f"{RUN_INDEX} of a run's parent folder")
    seeds = [TrainConfig.from_dict(values, source=str(folder / RUN_INDEX))
             for values in json.loads((folder / RUN_INDEX).read_text())["seeds"]]
    plan = []
    for config in seeds:
        seed_dir = folder / f"seed{config.seed}"
        plan.append((config, seed_dir, (seed_dir / "checkpoint.pt").is_file()))
    return folder, plan


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has repeats: {args.seeds}")
    if args.resume:
        extra = _options_given(parser, args, allowed={"resume", "no_progress"})
        if extra:
            parser.error(f"--resume continues a run with its saved settings, which cannot change: drop "
                         f"{', '.join(extra)}")
    progress = not args.no_progress
    if args.list_nodes:
        with errors_as_messages(parser):
            print(list_nodes(args.list_nodes, args))
        return 0
    with errors_as_messages(parser):
        out, plan = _plan(args)
        summaries = []
        try:
            for config, seed_dir, resume in plan:
                if (seed_dir / "summary.json").is_file() and args.resume:
                    summaries.append(json.loads((seed_dir / "summary.json").read_text()))
                    print(f"seed folder {seed_dir}: finished already")
                    continue
                if config is not None:
                    print(f"seed {config.seed}: {config.teacher} -> {config.student} on {config.dataset}, "
                          f"{config.iterations} iterations, {config.device}, amp {config.amp}, "
                          f"CUDA graphs {'on' if config.cuda_graphs else 'off'}, compile {config.compile}; "
                          f"writing {seed_dir}")
                    if config.compile != "off":
                        print(f"the steps are compiled (torch.compile, mode {config.compile}) during the first "
                              "iteration, about a minute on a small CPU; --compile off runs them eagerly")
                # A seed of a resumed parent that never wrote a checkpoint starts again from nothing.
                summaries.append(train(config, seed_dir, resume=resume, progress=progress,
                                       overwrite=args.overwrite or bool(args.resume)))
        except RunInterrupted as stopped:
            target = out if len(plan) > 1 else stopped.run_dir
            parser.exit(128 + stopped.signum, f"\n{parser.prog}: {stopped}\ncontinue with: {parser.prog} --resume "
                                              f"{target}\n")

    for s in summaries:
        print(f"seed {s['seed']}: teacher test accuracy {s['teacher_acc']:.2f}%, student test accuracy "
              f"{s['student_acc']:.2f}% ({s['iterations']} iterations, {s['seconds']:.0f} s, "
              f"{s['iterations_per_second']:.2f} it/s)")
    if len(summaries) > 1:
        accs = [s["student_acc"] for s in summaries]
        print(f"student test accuracy over {len(accs)} seeds: {_mean_std(accs)}%")
        (out / "summary.json").write_text(json.dumps(
            {"student_acc_mean": statistics.fmean(accs), "student_acc_std": statistics.pstdev(accs),
             "seeds": [s["seed"] for s in summaries], "runs": summaries}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
