"""python -m zskt_fast.fewshot: the paper's few-shot baseline, knowledge distillation with attention transfer (KD+AT)
from the teacher to the student on M real images per class."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ._cli import add_options, errors_as_messages, program_parser, settings_from_args
from .common import left_as_found
from .engine.settings.config import FewShotConfig
from .engine.experiments.fewshot import train_kd_at
from .engine.lifecycle.run import RunInterrupted
from .engine.settings.parts import ALGORITHM, DATA, OUTPUTS, SPEED


def build_parser() -> argparse.ArgumentParser:
    p = program_parser(
        "fewshot",
        "Few-shot KD+AT (Zagoruyko & Komodakis, 2017, the baseline of Micaelli & Storkey, 2019): the "
        "student learns from the teacher on M training images per class with (1 - alpha) CE + alpha T^2 "
        "KL(T || S) + beta sum AT, SGD with Nesterov momentum, weight decay and a cosine schedule, random "
        "crops and flips. Each seed writes a run folder: config.json, indices.json (the images used), "
        "metrics.jsonl, checkpoint.pt, student.pt and summary.json.")
    groups = add_options(p, FewShotConfig, skip=("seed", "num_classes"),
                         group_order=(DATA, ALGORITHM, SPEED, OUTPUTS))
    groups[ALGORITHM].add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed; several: "
                                                                                      "mean ± std of the accuracy")
    groups[OUTPUTS].add_argument("--out", default=None, help="output folder (one seedN subfolder per seed); default "
                                                             "runs/fewshot-DATASET-MM-TIME")
    groups[OUTPUTS].add_argument("--resume", action="store_true", help="continue the seeds of --out from their "
                                                                       "checkpoints, with their saved settings")
    groups[OUTPUTS].add_argument("--overwrite", action="store_true", help="replace the runs in --out")
    groups[OUTPUTS].add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and not args.out:
        parser.error("--resume needs --out, the folder of the run to continue")
    with errors_as_messages(parser, debug=args.debug) as ending:
        configs = [settings_from_args(FewShotConfig, args, seed=seed).resolved() for seed in args.seeds]
        first = configs[0]
        out = Path(args.out or f"runs/fewshot-{first.data.dataset}-M{first.kd.samples_per_class}-"
                               f"{time.strftime('%Y%m%d-%H%M%S')}")
        ending.continue_with = f"{parser.prog} --out {out} --resume"
        summaries = []
        with left_as_found(out, keep_on=(KeyboardInterrupt, RunInterrupted)):
            for config in configs:
                folder = out / f"seed{config.run.seed}"
                if args.resume and (folder / "summary.json").is_file():
                    summaries.append(json.loads((folder / "summary.json").read_text()))
                    continue
                resume = args.resume and (folder / "checkpoint.pt").is_file()
                print(f"seed {config.run.seed}: KD+AT {config.networks.teacher} -> {config.networks.student} on "
                      f"{config.data.dataset}, M = {config.kd.samples_per_class} per class; writing {folder}")
                summaries.append(train_kd_at(config, folder, resume=resume, overwrite=args.overwrite,
                                             progress=not args.no_progress))
    for s in summaries:
        print(f"seed {s['seed']}: teacher {s['teacher_acc']:.2f}%, KD+AT student {s['student_acc']:.2f}% "
              f"(M = {s['samples_per_class']}, {s['images']} images, {s['iterations']} steps, {s['seconds']:.0f} s)")
    if len(summaries) > 1:
        accs = [s["student_acc"] for s in summaries]
        print(f"KD+AT student accuracy over {len(accs)} seeds: {statistics.fmean(accs):.2f} ± "
              f"{statistics.pstdev(accs):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
