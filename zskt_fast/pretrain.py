"""python -m zskt_fast.pretrain: train a teacher on real data and write a checkpoint the trainer loads."""
from __future__ import annotations

import argparse
import sys

import torch

from ._cli import HelpFormatter
from .data import DATASETS, DatasetNotFound
from .engine.checkpoint import CheckpointError
from .engine.teachers import PRETRAIN_EPOCHS, default_teacher_path, pretrain_teacher
from .models import ARCHITECTURE_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zskt_fast.pretrain",
        description="Train a teacher classifier (cross-entropy, SGD with Nesterov momentum and weight decay, cosine or "
                    "step schedule, crop/flip augmentation where it fits the data) and write a checkpoint in the "
                    "layout `python -m zskt_fast.train --teacher-ckpt` reads. By default it is written where the "
                    "trainer looks for its teacher, so a following train run with the same dataset and architecture "
                    "finds it.",
        formatter_class=HelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="data set to train on")
    parser.add_argument("--arch", default="wrn-16-2", help=f"architecture: {ARCHITECTURE_HELP}")
    parser.add_argument("--data-root", default="data", help="folder holding CIFAR-10 / SVHN")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 / SVHN into --data-root")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs; default " + ", ".join(f"{k} {v}" for k, v in PRETRAIN_EPOCHS.items()))
    parser.add_argument("--lr", type=float, default=None,
                        help="initial learning rate; default 0.1 (0.02 for ResNets on digits)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    parser.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                        help="cosine to 0, or x0.2 at 30%%, 60%% and 80%% of training")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--out", default=None,
                        help="checkpoint to write; default: the trainer's teacher cache "
                             "($ZSKT_FAST_CACHE or ~/.cache/zskt_fast)/teachers/DATASET-ARCH.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if (args.lr is not None and not args.lr > 0) or args.weight_decay < 0:
        parser.error("--lr must be > 0 and --weight-decay >= 0")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = args.out or default_teacher_path(args.dataset, args.arch)
    try:
        result = pretrain_teacher(args.dataset, args.arch, out, epochs=args.epochs, data_root=args.data_root,
                                  download=args.download, device=device, seed=args.seed, lr=args.lr,
                                  batch_size=args.batch_size, weight_decay=args.weight_decay, schedule=args.schedule,
                                  progress=not args.no_progress)
    except (ValueError, DatasetNotFound, CheckpointError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"{result['arch']} on {result['dataset']}: test accuracy {result['test_acc']:.2f}% after {result['epochs']} "
          f"epochs ({result['seconds']:.0f} s); checkpoint written to {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
