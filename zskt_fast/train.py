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

from ._cli import HelpFormatter
from .data import DATASETS, DatasetNotFound
from .engine.checkpoint import CheckpointError
from .engine.config import AMP_CHOICES, DATASET_DEFAULTS, TrainConfig
from .engine.trainer import train
from .models import ARCHITECTURE_HELP
from .ops import BACKENDS

DEFAULTS = TrainConfig()


def _per_dataset(index: int) -> str:
    return ", ".join(f"{name} {values[index]:,}" if isinstance(values[index], int) else f"{name} {values[index]}"
                     for name, values in DATASET_DEFAULTS.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zskt_fast.train",
        description="Zero-shot knowledge transfer (Micaelli & Storkey, 2019): a generator searches for images on which "
                    "the student and the frozen teacher disagree, the student learns to agree with the teacher on "
                    "them. The data set is only used to test the student (and to pretrain a digits teacher). "
                    "Each seed writes a run folder: config.json, metrics.jsonl, checkpoint.pt, images/, student.pt, "
                    "generator.pt and summary.json.",
        formatter_class=HelpFormatter)
    data = p.add_argument_group("data and networks")
    data.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset,
                      help="test set of the student; digits ships with scikit-learn and works offline")
    data.add_argument("--data-root", default=DEFAULTS.data_root, help="folder holding CIFAR-10 / SVHN")
    data.add_argument("--download", action="store_true", help="download CIFAR-10 / SVHN into --data-root")
    data.add_argument("--teacher", default=None,
                      help=f"teacher architecture: {ARCHITECTURE_HELP}; default per dataset: {_per_dataset(0)}")
    data.add_argument("--student", default=None, help=f"student architecture; default: {_per_dataset(1)}")
    data.add_argument("--teacher-ckpt", default=None,
                      help="teacher weights: the authors' last.pth.tar, a file from zskt_fast.pretrain or a plain "
                           "state dict; default: the cached pretrained teacher ($ZSKT_FAST_CACHE or "
                           "~/.cache/zskt_fast/teachers/DATASET-ARCH.pt), trained on first use for digits")
    algo = p.add_argument_group("Algorithm 1 (defaults: the authors' settings)")
    algo.add_argument("--iterations", type=int, default=None,
                      help=f"iterations N, each n_G generator + n_S student steps; default: {_per_dataset(2)}")
    algo.add_argument("--n-generator-steps", type=int, default=DEFAULTS.n_generator_steps, help="n_G")
    algo.add_argument("--n-student-steps", type=int, default=DEFAULTS.n_student_steps, help="n_S")
    algo.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="generated images per iteration")
    algo.add_argument("--z-dim", type=int, default=DEFAULTS.z_dim, help="noise dimension")
    algo.add_argument("--generator-lr", type=float, default=DEFAULTS.generator_lr,
                      help="Adam learning rate of the generator, cosine-annealed to 0")
    algo.add_argument("--student-lr", type=float, default=DEFAULTS.student_lr,
                      help="Adam learning rate of the student, cosine-annealed to 0")
    algo.add_argument("--beta", type=float, default=DEFAULTS.beta, help="attention-transfer weight; 0 disables it")
    algo.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="KL temperature")
    algo.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip, help="gradient-norm clip of both nets")
    algo.add_argument("--seeds", type=int, nargs="+", default=[0],
                      help="run once per seed; with several, report mean ± std (population std) like the paper")
    speed = p.add_argument_group("speed")
    speed.add_argument("--device", default=DEFAULTS.device, help="cpu, cuda, cuda:N, or auto (CUDA when present)")
    speed.add_argument("--amp", choices=AMP_CHOICES, default=DEFAULTS.amp,
                       help="mixed precision; auto: bf16 on GPUs that support it, off on the CPU")
    speed.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                       help="capture the generator and student steps as CUDA graphs; default: on for CUDA")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format; default: on for CUDA")
    speed.add_argument("--backend", choices=BACKENDS, default=DEFAULTS.backend,
                       help="loss kernels: eager PyTorch, C++ cpu, cuda, triton, or auto (fastest for the device)")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", default=None,
                     help="output folder (one seedN subfolder per seed); default runs/DATASET-TEACHER-STUDENT-TIME")
    out.add_argument("--resume", default=None, metavar="RUN_DIR",
                     help="continue a killed run from its last checkpoint (a seedN folder); its saved settings apply")
    out.add_argument("--eval-every", type=int, default=None,
                     help=f"test the student and save an image grid every this many iterations; default: "
                          f"{_per_dataset(3)}")
    out.add_argument("--log-every", type=int, default=None, help=f"metrics-log interval; default: {_per_dataset(4)}")
    out.add_argument("--checkpoint-minutes", type=float, default=DEFAULTS.checkpoint_minutes,
                     help="write a checkpoint at least this often (a killed run loses at most this much)")
    out.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every,
                     help="also checkpoint every this many iterations (0: by time only)")
    out.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard events even when installed")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace, seed: int) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset, data_root=args.data_root, download=args.download, teacher=args.teacher,
        student=args.student, teacher_ckpt=args.teacher_ckpt, iterations=args.iterations,
        n_generator_steps=args.n_generator_steps, n_student_steps=args.n_student_steps, batch_size=args.batch_size,
        z_dim=args.z_dim, generator_lr=args.generator_lr, student_lr=args.student_lr, beta=args.beta,
        temperature=args.temperature, grad_clip=args.grad_clip, seed=seed, device=args.device, amp=args.amp,
        cuda_graphs=args.cuda_graphs, channels_last=args.channels_last, backend=args.backend,
        eval_every=args.eval_every, log_every=args.log_every, checkpoint_minutes=args.checkpoint_minutes,
        checkpoint_every=args.checkpoint_every, tensorboard=not args.no_tensorboard)


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has repeats: {args.seeds}")
    try:
        if args.resume:
            if not Path(args.resume, "config.json").is_file():
                raise CheckpointError(f"--resume {args.resume}: no config.json there; give the seedN folder of a run")
            summaries = [train(TrainConfig(), args.resume, resume=True, progress=not args.no_progress)]
            out = Path(args.resume).parent
        else:
            configs = [config_from_args(args, seed).resolved() for seed in args.seeds]  # all errors before any work
            first = configs[0]
            out = Path(args.out or f"runs/{first.dataset}-{first.teacher}-{first.student}-"
                                   f"{time.strftime('%Y%m%d-%H%M%S')}")
            summaries = []
            for config in configs:
                print(f"seed {config.seed}: {config.teacher} -> {config.student} on {config.dataset}, "
                      f"{config.iterations} iterations, {config.device}, amp {config.amp}, "
                      f"CUDA graphs {'on' if config.cuda_graphs else 'off'}; writing {out / f'seed{config.seed}'}")
                summaries.append(train(config, out / f"seed{config.seed}", progress=not args.no_progress))
    except (ValueError, DatasetNotFound, CheckpointError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except FloatingPointError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"\ninterrupted; continue from the last checkpoint with {parser.prog} --resume RUN_DIR/seedN "
                         f"(a run folder holding checkpoint.pt)\n")

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
