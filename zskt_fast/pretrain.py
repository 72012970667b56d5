"""python -m zskt_fast.pretrain: train a teacher on real data and write a checkpoint the trainer loads."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._cli import add_options, errors_as_messages, program_parser, settings_from_args
from .common import left_as_found, writable_folder
from .engine.settings.config import PretrainConfig
from .engine.experiments.supervised import train_supervised
from .engine.teachers import default_teacher_path


def build_parser() -> argparse.ArgumentParser:
    parser = program_parser(
        "pretrain",
        "Train a teacher classifier (cross-entropy, SGD with Nesterov momentum and weight decay, cosine or "
        "step schedule, crop/flip augmentation where it fits the data) and write a checkpoint in the "
        "layout `python -m zskt_fast.train --teacher-ckpt` reads. By default it is written where the "
        "trainer looks for its teacher, so a following train run with the same dataset and architecture "
        "finds it.")
    add_options(parser, PretrainConfig)
    parser.add_argument("--out", default=None,
                        help="checkpoint to write; default: the trainer's teacher cache "
                             "($ZSKT_FAST_CACHE or ~/.cache/zskt_fast)/teachers/DATASET-ARCH.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with errors_as_messages(parser, debug=args.debug):
        config = settings_from_args(PretrainConfig, args).resolved()
        out = Path(args.out or default_teacher_path(config.data.dataset, config.pretrain.arch))
        if out.is_dir():
            raise ValueError(f"{out} is a folder: give the path of the checkpoint file to write")
        with left_as_found(_first_missing_folder(out.parent)):
            writable_folder(out.parent, "folder of the checkpoint")
            result = train_supervised(config, out, progress=not args.no_progress)
    print(f"{result['arch']} on {result['dataset']}: test accuracy {result['test_acc']:.2f}% after {result['epochs']} "
          f"epochs ({result['seconds']:.0f} s); checkpoint written to {result['path']}")
    return 0


def _first_missing_folder(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet (a refused start removes it again)."""
    folder = folder.expanduser().absolute()
    missing = None
    while not folder.exists():
        missing, folder = folder, folder.parent
    return missing


if __name__ == "__main__":
    sys.exit(main())
