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
from .engine.trainer import train


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
                     help="continue a killed run from its last checkpoint (a seedN folder); its saved settings apply")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has repeats: {args.seeds}")
    interrupted = (f"continue from the last checkpoint with {parser.prog} --resume RUN_DIR/seedN (a run folder "
                   f"holding checkpoint.pt)")
    with errors_as_messages(parser, interrupted=interrupted):
        if args.resume:
            if not Path(args.resume, "config.json").is_file():
                raise CheckpointError(f"--resume {args.resume}: no config.json there; give the seedN folder of a run")
            summaries = [train(TrainConfig(), args.resume, resume=True, progress=not args.no_progress)]
            out = Path(args.resume).parent
        else:
            # every setting of every seed checked before any work
            configs = [settings_from_args(TrainConfig, args, seed=seed).resolved() for seed in args.seeds]
            first = configs[0]
            out = Path(args.out or f"runs/{first.dataset}-{first.teacher}-{first.student}-"
                                   f"{time.strftime('%Y%m%d-%H%M%S')}")
            summaries = []
            for config in configs:
                print(f"seed {config.seed}: {config.teacher} -> {config.student} on {config.dataset}, "
                      f"{config.iterations} iterations, {config.device}, amp {config.amp}, "
                      f"CUDA graphs {'on' if config.cuda_graphs else 'off'}; writing {out / f'seed{config.seed}'}")
                summaries.append(train(config, out / f"seed{config.seed}", progress=not args.no_progress))

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
