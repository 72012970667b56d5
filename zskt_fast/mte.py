"""python -m zskt_fast.mte: transition curves and the mean transition error (MTE) of networks A against network B.

How closely A (usually a student) and B (usually its teacher) agree near A's decision boundaries: from
test images on which both predict the same class, A's cross-entropy toward each other class is descended on the image,
and the probability of that class under A and under B is recorded at every step. All trajectories run as one batch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._cli import errors_as_messages, program_parser
from .common import resolve_device, writable_folder
from .data import DATASETS, DEFAULT_DATA_ROOT, dataset_info, evaluation_loader, normalisation_of
from .engine.checkpoint import CheckpointError, load_classifier
from .engine.config import CHANNELS_HELP, DATA_ROOT_HELP, DOWNLOAD_HELP, IMAGE_SIZE_HELP
from .engine.distributed import broadcast_object, init_world, launched_ranks, process_group_closed_at_exit
from .engine.evaluation import evaluate
from .engine.transition_curves import (DEFAULT_IMAGES, DEFAULT_STEP_SIZE, DEFAULT_STEPS, SOURCES, TransitionCurves,
                                       mean_transition_error, select_matching_images, transition_curves)
from .models import ARCHITECTURE_HELP

__all__ = ["TransitionCurves", "main", "mean_transition_error", "select_matching_images", "transition_curves"]

IMAGES_PER_DATASET = {"digits": 300}  # digits has 397 test images; the others DEFAULT_IMAGES


def plot_curves(results: dict[str, TransitionCurves], path, reference_name: str) -> None:
    """The mean transition curves against the step: p_j^A solid, p_j^B on A's trajectories dashed, one colour per A."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outside = len(results) > 2  # many curves: the legend goes beside the plot, not over it
    fig, ax = plt.subplots(figsize=(10.5 if outside else 6.4, 4.2), dpi=120)
    for index, (name, curves) in enumerate(results.items()):
        mean_a, mean_b = curves.mean_curves()
        colour = f"C{index}"
        ax.plot(range(len(mean_a)), mean_a, color=colour, label=f"{name}: p_j (A)")
        ax.plot(range(len(mean_b)), mean_b, color=colour, linestyle="--",
                label=f"{reference_name} on {name}'s trajectories: p_j (B)  MTE {curves.mte:.3f}")
    ax.set_xlabel("step k")
    ax.set_ylabel("mean probability of the target class j")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("transition curves")
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = program_parser(
        "mte",
        "Transition curves and mean transition error (Algorithm 2 of Micaelli & Storkey, 2019) of one or "
        "more networks A against a network B, all trajectories batched. Writes curves_NAME.npz, mte.json "
        "and transition_curves.png to --out.")
    p.add_argument("--run", default=None, metavar="RUN_FOLDER",
                   help="a run folder of zskt_fast.train (its seedN folder): its student is added to the A networks, "
                        "its teacher is B, its dataset is used")
    p.add_argument("--net-a", nargs="+", default=[], metavar="PATH", help="network(s) A, usually students")
    p.add_argument("--arch-a", nargs="+", default=None, metavar="ARCH",
                   help=f"architecture of each --net-a ({ARCHITECTURE_HELP}); not needed for files this package wrote")
    p.add_argument("--names", nargs="+", default=None, help="labels of the A networks in the table and the plot")
    p.add_argument("--net-b", default=None, metavar="PATH", help="network B, usually the teacher")
    p.add_argument("--arch-b", default=None, metavar="ARCH", help="architecture of --net-b")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="test images to start from (default: the run's, "
                                                                     "else digits)")
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help=DATA_ROOT_HELP)
    p.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)
    p.add_argument("--image-size", type=int, default=None, help=IMAGE_SIZE_HELP + " (default with --run: the run's)")
    p.add_argument("--channels", type=int, default=None, help=CHANNELS_HELP)
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="per-channel normalisation mean; default: the one network B's file records, else the data "
                        "set's (for CIFAR-10 and SVHN the authors' constants)")
    p.add_argument("--std", type=float, nargs="+", default=None, help="per-channel normalisation std, with --mean")
    p.add_argument("--n-images", type=int, default=None,
                   help=f"N images on which A and B agree, the first ones of the test set; default: {DEFAULT_IMAGES} "
                        f"(the paper's), 300 for digits")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="K gradient steps per trajectory")
    p.add_argument("--step-size", type=float, default=DEFAULT_STEP_SIZE,
                   help="xi: x <- x - xi * grad_x CE(A(x), j)")
    p.add_argument("--source", choices=SOURCES, default="agreed",
                   help="source class i of an image: the class A and B both predict (the paper's Algorithm 2), or the "
                        "data set's label (the authors' code)")
    p.add_argument("--shuffle-seed", type=int, default=None,
                   help="take the first agreeing images in an order drawn with this seed (the authors' code takes a "
                        "seeded random order) instead of the test set's order")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                   help="memory for one batch of trajectories; default: half the free GPU memory, 2 GB on the CPU")
    p.add_argument("--out", default=None, help="output folder; default RUN_FOLDER/mte, else runs/mte-TIME")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with errors_as_messages(parser), process_group_closed_at_exit():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    world = None
    if launched_ranks() is not None:  # torchrun: the trajectories are shared out, rank 0 writes the results
        world, args.device = init_world(args.device, "gloo")
    writer = world is None or world.is_writer
    device = resolve_device(args.device)
    nets_a = [(path, None) for path in args.net_a]
    if args.arch_a is not None:
        if len(args.arch_a) != len(args.net_a):
            raise ValueError(f"--arch-a names {len(args.arch_a)} architectures for {len(args.net_a)} --net-a files")
        nets_a = list(zip(args.net_a, args.arch_a))
    names = [Path(path).stem for path in args.net_a]
    net_b, arch_b, dataset, data_root = args.net_b, args.arch_b, args.dataset, args.data_root
    image_size, channels = args.image_size, args.channels
    if args.run:
        config_path = Path(args.run) / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"--run {args.run}: no config.json there; give the seedN folder of a train run")
        config = json.loads(config_path.read_text())
        nets_a.insert(0, (str(Path(args.run) / "student.pt"), config["student"]))
        names.insert(0, f"zero-shot {config['student']}")
        net_b, arch_b = net_b or config["teacher_ckpt"], arch_b or config["teacher"]
        dataset = dataset or config["dataset"]
        if data_root == DEFAULT_DATA_ROOT:  # not given: the run's (stored resolved)
            data_root = config.get("data_root", data_root)
        if dataset == config["dataset"]:
            image_size = image_size or config.get("image_size")
            channels = channels or config.get("channels")
    if args.names is not None:
        if len(args.names) != len(nets_a):
            raise ValueError(f"--names gives {len(args.names)} labels for {len(nets_a)} A networks")
        names = list(args.names)
    if not nets_a or net_b is None:
        raise ValueError("give --run RUN_FOLDER, or --net-a PATH [PATH ...] and --net-b PATH")
    if len(set(names)) != len(names):
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    dataset = dataset or "digits"
    info = dataset_info(dataset, root=data_root, image_size=image_size, channels=channels)
    n_images = IMAGES_PER_DATASET.get(dataset, DEFAULT_IMAGES) if args.n_images is None else args.n_images
    shape = {"num_classes": info.num_classes, "in_channels": info.channels}
    teacher = load_classifier(net_b, arch_b, what="network B", **shape).to(device)
    students = [load_classifier(path, arch, what="network A", **shape).to(device) for path, arch in nets_a]
    # The images are normalised as network B (the teacher) was trained: its file's record, else the data set's.
    mean, std = normalisation_of(dataset, args.mean, args.std, channels=info.channels) if args.mean or args.std else \
        teacher.normalisation or (info.mean, info.std)
    loader = evaluation_loader(dataset, root=data_root, download=args.download, normalisation=(mean, std),
                               image_size=info.image_size, channels=info.channels)

    out = Path(args.out or (Path(args.run) / "mte" if args.run else
                            broadcast_object(f"runs/mte-{time.strftime('%Y%m%d-%H%M%S')}", world)))
    if writer:
        writable_folder(out)
    budget = int(args.memory_budget * 1024 ** 3) if args.memory_budget else None
    results, rows = {}, []
    b_acc = evaluate(teacher, loader, device) if writer else None
    for name, student in zip(names, students):
        start = time.perf_counter()
        curves = transition_curves(student, teacher, loader, n_images=n_images, steps=args.steps,
                                   step_size=args.step_size, device=device, memory_budget=budget,
                                   source=args.source, shuffle_seed=args.shuffle_seed,
                                   progress=not args.no_progress and writer, distributed=world is not None)
        seconds = time.perf_counter() - start
        results[name] = curves
        if not writer:
            continue
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        curves.save(out / f"curves_{safe}.npz")
        mean_a, mean_b = curves.mean_curves()
        rows.append({"name": name, "mte": curves.mte, "test_acc_a": evaluate(student, loader, device),
                     "final_p_a": float(mean_a[-1]), "final_p_b": float(mean_b[-1]), "seconds": seconds,
                     "curves": f"curves_{safe}.npz"})
    if not writer:
        return 0
    plot_curves(results, out / "transition_curves.png", f"B ({arch_b})")
    summary = {"net_b": str(net_b), "arch_b": arch_b, "test_acc_b": b_acc, "dataset": dataset, "n_images": n_images,
               "steps": args.steps, "step_size": args.step_size, "source": args.source,
               "normalisation": {"mean": list(mean), "std": list(std)},
               "shuffle_seed": args.shuffle_seed, "processes": world.size if world else 1, "results": rows}
    (out / "mte.json").write_text(json.dumps(summary, indent=2))

    print(f"B: {net_b} ({arch_b}, test accuracy {b_acc:.2f}%); {dataset}, N = {n_images}, K = {args.steps}, "
          f"xi = {args.step_size}")
    print("| network A | test acc | MTE | mean p_j at step K: A | B | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['test_acc_a']:.2f}% | {row['mte']:.4f} | {row['final_p_a']:.3f} | "
              f"{row['final_p_b']:.3f} | {row['seconds']:.1f} |")
    print(f"written to {out}: mte.json, transition_curves.png, " + ", ".join(r["curves"] for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
