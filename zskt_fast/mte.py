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
from dataclasses import dataclass
from pathlib import Path

import torch

from ._cli import add_options, errors_as_messages, program_parser, settings_from_args
from .common import atomic_write, atomic_write_text, left_as_found, resolve_device, writable_folder
from .data import DEFAULT_DATA_ROOT, dataset_info, evaluation_loader
from .engine.lifecycle.checkpoint import CheckpointError, load_classifier
from .engine.settings.config import CurvesConfig
from .engine.lifecycle.distributed import broadcast_object, init_world, launched_ranks, process_group_closed_at_exit
from .engine.lifecycle.evaluation import evaluate
from .engine.experiments.transition_curves import (TransitionCurves, mean_transition_error, select_matching_images,
                                       transition_curves)
from .models import ARCHITECTURE_HELP

__all__ = ["TransitionCurves", "main", "mean_transition_error", "select_matching_images", "transition_curves"]


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
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = program_parser(
        "mte",
        "Transition curves and mean transition error (Algorithm 2 of Micaelli & Storkey, 2019) of one or "
        "more networks A against a network B, all trajectories batched. Writes curves_NAME.npz, mte.json "
        "and transition_curves.png to --out. With --run, the data set, its folder, image size and channels "
        "default to the run's.")
    networks = p.add_argument_group("networks")
    networks.add_argument("--run", default=None, metavar="RUN_FOLDER",
                          help="a run folder of zskt_fast.train (its seedN folder): its student is added to the A "
                               "networks, its teacher is B, its dataset is used")
    networks.add_argument("--net-a", nargs="+", default=[], metavar="PATH", help="network(s) A, usually students")
    networks.add_argument("--arch-a", nargs="+", default=None, metavar="ARCH",
                          help=f"architecture of each --net-a ({ARCHITECTURE_HELP}); not needed for files this "
                               f"package wrote")
    networks.add_argument("--names", nargs="+", default=None, help="labels of the A networks in the table and the plot")
    networks.add_argument("--net-b", default=None, metavar="PATH", help="network B, usually the teacher")
    networks.add_argument("--arch-b", default=None, metavar="ARCH", help="architecture of --net-b")
    add_options(p, CurvesConfig, skip=("seed",), defaults={"dataset": None})
    p.add_argument("--out", default=None, help="output folder; default RUN_FOLDER/mte, else runs/mte-TIME")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@dataclass
class Networks:
    """What is compared: the A networks (file, architecture or None) and their labels, network B, and the data
    settings a train run supplies."""
    a: list[tuple[str, str | None]]
    names: list[str]
    b: str
    arch_b: str | None
    data: dict


def networks_to_compare(args: argparse.Namespace) -> Networks:
    """The A networks and B from --net-a / --net-b and --run (whose student joins A, whose teacher is B)."""
    nets_a = [(path, None) for path in args.net_a]
    if args.arch_a is not None:
        if len(args.arch_a) != len(args.net_a):
            raise ValueError(f"--arch-a names {len(args.arch_a)} architectures for {len(args.net_a)} --net-a files")
        nets_a = list(zip(args.net_a, args.arch_a))
    names = [Path(path).stem for path in args.net_a]
    net_b, arch_b, data = args.net_b, args.arch_b, {}
    if args.run:
        config_path = Path(args.run) / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"--run {args.run}: no config.json there; give the seedN folder of a train run")
        config = json.loads(config_path.read_text())
        nets_a.insert(0, (str(Path(args.run) / "student.pt"), config["student"]))
        names.insert(0, f"zero-shot {config['student']}")
        net_b, arch_b = net_b or config["teacher_ckpt"], arch_b or config["teacher"]
        data = {"dataset": config["dataset"], "data_root": config.get("data_root", DEFAULT_DATA_ROOT)}
        if args.dataset in (None, config["dataset"]):
            data.update(image_size=config.get("image_size"), channels=config.get("channels"))
    if args.names is not None:
        if len(args.names) != len(nets_a):
            raise ValueError(f"--names gives {len(args.names)} labels for {len(nets_a)} A networks")
        names = list(args.names)
    if not nets_a or net_b is None:
        raise ValueError("give --run RUN_FOLDER, or --net-a PATH [PATH ...] and --net-b PATH")
    if len(set(names)) != len(names):
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    return Networks(nets_a, names, net_b, arch_b, data)


def curves_config(args: argparse.Namespace, networks: Networks) -> CurvesConfig:
    """The settings given, the run's where none were (a data root given explicitly wins over the run's)."""
    given = settings_from_args(CurvesConfig, args)
    values = given.to_dict()
    for key, value in networks.data.items():
        default = DEFAULT_DATA_ROOT if key == "data_root" else None
        if values[key] == default and value is not None:
            values[key] = value
    values["dataset"] = values["dataset"] or "digits"
    return CurvesConfig.from_flat(values).resolved()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with process_group_closed_at_exit(), errors_as_messages(parser, debug=args.debug) as ending:
        world = None
        if launched_ranks() is not None:  # torchrun: the trajectories are shared out, rank 0 writes the results
            world, args.device = init_world(args.device, "gloo")
        resolve_device(args.device)  # a device that is not there is the first error, before any file is read
        networks = networks_to_compare(args)
        config = curves_config(args, networks)
        out = Path(args.out or (Path(args.run) / "mte" if args.run else
                                broadcast_object(f"runs/mte-{time.strftime('%Y%m%d-%H%M%S')}", world)))
        writer = world is None or world.is_writer
        ending.quiet = not writer
        with left_as_found(out, enabled=writer):
            if writer:
                writable_folder(out)
            results, rows, summary = compare(networks, config, world, progress=not args.no_progress)
            if writer:
                write_results(out, results, rows, summary)
    return 0


def compare(networks: Networks, config: CurvesConfig, world, progress: bool) -> tuple[dict, list[dict], dict]:
    """The curves of every A network against B (rank 0 of a torchrun job also tests the networks)."""
    writer, device = world is None or world.is_writer, torch.device(config.run.device)
    data, settings = config.data, config.curves
    shape = {"num_classes": dataset_info(data.dataset, root=data.data_root).num_classes,
             "in_channels": data.channels}
    teacher = load_classifier(networks.b, networks.arch_b, what="network B", **shape).to(device)
    students = [load_classifier(path, arch, what="network A", **shape).to(device) for path, arch in networks.a]
    # The images are normalised as network B (the teacher) was trained: its file's record, else the data set's.
    info = dataset_info(data.dataset, image_size=data.image_size, channels=data.channels)
    mean, std = (data.mean, data.std) if data.mean is not None else teacher.normalisation or (info.mean, info.std)
    loader = evaluation_loader(data.dataset, root=data.data_root, download=data.download, normalisation=(mean, std),
                               image_size=data.image_size, channels=data.channels)
    budget = int(settings.memory_budget * 1024 ** 3) if settings.memory_budget else None
    results, rows = {}, []
    for name, student in zip(networks.names, students):
        start = time.perf_counter()
        curves = transition_curves(student, teacher, loader, n_images=settings.n_images, steps=settings.steps,
                                   step_size=settings.step_size, device=device, memory_budget=budget,
                                   source=settings.source, shuffle_seed=settings.shuffle_seed,
                                   progress=progress and writer, distributed=world is not None)
        seconds = time.perf_counter() - start
        results[name] = curves
        mean_a, mean_b = curves.mean_curves()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        accuracy = evaluate(student, loader, device) if writer else None
        rows.append({"name": name, "mte": curves.mte, "test_acc_a": accuracy,
                     "final_p_a": float(mean_a[-1]), "final_p_b": float(mean_b[-1]), "seconds": seconds,
                     "curves": f"curves_{safe}.npz"})
    summary = {"net_b": str(networks.b), "arch_b": networks.arch_b,
               "test_acc_b": evaluate(teacher, loader, device) if writer else None, "dataset": data.dataset,
               "n_images": settings.n_images, "steps": settings.steps, "step_size": settings.step_size,
               "source": settings.source, "normalisation": {"mean": list(mean), "std": list(std)},
               "shuffle_seed": settings.shuffle_seed, "processes": world.size if world else 1, "results": rows}
    return results, rows, summary


def write_results(out: Path, results: dict, rows: list[dict], summary: dict) -> None:
    """curves_NAME.npz, transition_curves.png and mte.json into `out`, and the table printed."""
    for row, curves in zip(rows, results.values()):
        curves.save(out / row["curves"])
    plot_curves(results, out / "transition_curves.png", f"B ({summary['arch_b']})")
    atomic_write_text(out / "mte.json", json.dumps(summary, indent=2))
    print(f"B: {summary['net_b']} ({summary['arch_b']}, test accuracy {summary['test_acc_b']:.2f}%); "
          f"{summary['dataset']}, N = {summary['n_images']}, K = {summary['steps']}, xi = {summary['step_size']}")
    print("| network A | test acc | MTE | mean p_j at step K: A | B | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['test_acc_a']:.2f}% | {row['mte']:.4f} | {row['final_p_a']:.3f} | "
              f"{row['final_p_b']:.3f} | {row['seconds']:.1f} |")
    print(f"written to {out}: mte.json, transition_curves.png, " + ", ".join(r["curves"] for r in rows))


if __name__ == "__main__":
    sys.exit(main())
