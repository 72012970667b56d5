"""python -m zskt_fast.train: zero-shot knowledge transfer (Algorithm 1), with no data seen by the student.

With no arguments: the offline default, handwritten digits from scikit-learn, a WRN-16-2 teacher (pretrained and cached
on first use) distilled into a WRN-16-1 student.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ._cli import add_options, errors_as_messages, program_parser, settings_from_args
from .common import atomic_write_text, left_as_found, writable_folder
from .data import dataset_info
from .engine.lifecycle.checkpoint import CheckpointError
from .engine.settings.config import TrainConfig
from .engine.methods.registry import METHODS
from .engine.distill import RUN_FILES
from .engine.lifecycle.distributed import (World, broadcast_object, check_global_batch, init_world, launched_ranks,
                                 process_group_closed_at_exit)
from .engine.lifecycle.run import RunInterrupted, check_run_folder
from .engine.settings.parts import ALGORITHM, DATA, OUTPUTS, PROCESSES, SPEED
from .engine.lifecycle.speed import amp_reason, compile_reason
from .engine.teachers import pretrain_missing_teacher
from .engine.trainer import prepare_run, train
from .models import architecture_key, build_classifier, describe_network_nodes

RUN_INDEX = "run.json"  # in the parent folder: the settings of every seed, for --resume of the whole run


def build_parser() -> argparse.ArgumentParser:
    p = program_parser(
        "train",
        "Zero-shot knowledge transfer (Micaelli & Storkey, 2019): a generator searches for images on which "
        "the student and the frozen teacher disagree, the student learns to agree with the teacher on "
        "them. The data set is only used to test the student (and to pretrain a digits teacher). "
        "Each seed writes a run folder: config.json, metrics.jsonl, checkpoint.pt, images/, student.pt, "
        "generator.pt and summary.json.")
    groups = add_options(p, TrainConfig, skip=("seed",), group_order=(DATA, ALGORITHM, SPEED, OUTPUTS, PROCESSES))
    groups[ALGORITHM].add_argument("--seeds", type=int, nargs="+", default=[0],
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
    groups[PROCESSES].add_argument(
        "--parallel", choices=("data", "seeds"), default="data",
        help="under torchrun: data: every process takes a share of each batch (--batch-size stays the global batch) "
             "and the gradients are averaged; seeds: each process runs its own subset of --seeds as independent "
             "runs, and rank 0 reports them together")
    p.add_argument("--list-nodes", default=None, metavar="ARCH",
                   help="print the nodes of architecture ARCH that --attention-layers can name (modules with feature "
                        "map outputs and their shapes, on the images of --dataset / --image-size), and exit")
    return p


@dataclasses.dataclass
class SeedRun:
    """One seed of a run: its settings (None: its folder's config.json), its folder, and whether it resumes."""
    config: TrainConfig | None
    folder: Path
    resume: bool


def output_folder(args: argparse.Namespace, world: World | None) -> Path:
    """The folder the run writes (or continues): --resume's, --out, or a new one named after the run."""
    if args.resume:
        folder = Path(args.resume)
        return folder.parent if (folder / "config.json").is_file() else folder
    if args.out:
        return Path(args.out)
    first = settings_from_args(TrainConfig, args, seed=args.seeds[0]).resolved()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(broadcast_object(f"runs/{first.data.dataset}-{first.networks.teacher}-{first.networks.student}-"
                                 f"{stamp}".replace(":", "-"), world))


def plan_new_run(args: argparse.Namespace, out: Path, world: World | None) -> list[SeedRun]:
    """The seeds of a new run in `out`, every setting of every seed checked, and the seeds' folders, before anything
    is written; then rank 0 writes run.json (and, under torchrun, pretrains a missing digits teacher once, before the
    other processes look for it)."""
    configs = [settings_from_args(TrainConfig, args, seed=seed).resolved() for seed in args.seeds]
    first = configs[0]
    plan = [SeedRun(config, out / f"seed{config.run.seed}", False) for config in configs]
    if world is not None and args.parallel == "data":
        check_global_batch(first.steps.batch_size, world.size)
        METHODS[first.objectives.method].strategy.check_world(first, world.size)
    prepared = prepare_run(first)  # the seeds share data, networks and teacher: one check covers them all
    for seed in plan:
        check_run_folder(seed.folder, RUN_FILES, overwrite=args.overwrite, create=False)
    if world is None or world.is_writer:
        writable_folder(out)
        atomic_write_text(out / RUN_INDEX, json.dumps({"seeds": [c.to_dict() for c in configs]}, indent=2))
        if world is not None and prepared.teacher_file is None:
            pretrain_missing_teacher(first.networks, first.run, prepared.teacher_path, not args.no_progress)
    return plan


def plan_resumed_run(folder: Path) -> list[SeedRun]:
    """A seedN folder continues that seed; a parent folder continues each unfinished seed of its run.json (starting
    those that never wrote a checkpoint) and keeps the finished ones."""
    if (folder / "config.json").is_file():
        return [SeedRun(None, folder, True)]
    if not (folder / RUN_INDEX).is_file():
        raise CheckpointError(f"cannot resume {folder}: no config.json there (the seedN folder of a run), nor the "
                              f"{RUN_INDEX} of a run's parent folder")
    seeds = [TrainConfig.from_dict(values, source=str(folder / RUN_INDEX))
             for values in json.loads((folder / RUN_INDEX).read_text())["seeds"]]
    folders = [folder / f"seed{c.run.seed}" for c in seeds]
    return [SeedRun(c, seed_dir, (seed_dir / "checkpoint.pt").is_file()) for c, seed_dir in zip(seeds, folders)]


def describe(config: TrainConfig, folder: Path, args: argparse.Namespace, world: World | None) -> list[str]:
    """What a seed is about to do, said before it starts."""
    steps = config.steps
    device = torch.device(config.run.device)
    fresh = not args.resume  # a resumed run keeps its recorded settings: there is no choice to explain
    why_amp = f" (auto: {amp_reason(device)})" if args.amp == "auto" and fresh else ""
    strategy = METHODS[config.objectives.method].strategy
    compiled = strategy.compiled_steps(config.loop), strategy.compiled_unit
    why_compile = f" (auto: {compile_reason(device, *compiled)})" if args.compile == "auto" and fresh else ""
    length = strategy.describe(config)
    lines = [f"seed {config.run.seed}: {config.networks.teacher} -> {config.networks.student} on "
             f"{config.data.dataset}, method {METHODS[config.objectives.method].title}, "
             f"{length}, {config.run.device}, "
             f"amp {steps.amp}{why_amp}, CUDA graphs {'on' if steps.cuda_graphs else 'off'}, "
             f"compile {steps.compile}{why_compile}; writing {folder}"]
    if world is not None and args.parallel == "data":
        lines.append(f"data-parallel over {world.size} processes: {steps.batch_size // world.size} of the "
                     f"{steps.batch_size} images of each batch per process")
    if steps.compile != "off":
        lines.append(f"the steps are compiled (torch.compile, mode {steps.compile}) during the first iteration, about "
                     f"a minute on a small CPU; --compile off runs them eagerly")
    return lines


def run_seeds(plan: list[SeedRun], args: argparse.Namespace, world: World | None, say) -> list[dict]:
    """Each seed's summary: a finished seed of a resumed run is kept, the others run (or continue)."""
    summaries = []
    for seed in plan:
        if args.resume and (seed.folder / "summary.json").is_file():
            summaries.append(json.loads((seed.folder / "summary.json").read_text()))
            say(f"seed folder {seed.folder}: finished already")
            continue
        if seed.config is not None:
            for line in describe(seed.config, seed.folder, args, world):
                say(line)
        # A seed of a resumed parent that never wrote a checkpoint starts again from nothing.
        overwrite = args.overwrite or bool(args.resume)
        summaries.append(train(seed.config, seed.folder, resume=seed.resume, overwrite=overwrite,
                               progress=not args.no_progress and (world is None or world.is_writer),
                               distributed=world is not None and args.parallel == "data"))
    return summaries


def report(summaries: list[dict], out: Path) -> None:
    """Each seed's accuracies; with several, their mean ± std, also written to the parent's summary.json."""
    for s in summaries:
        unit = s.get("unit", "iteration")
        short = {"iteration": "it"}.get(unit, f"{unit}s")
        print(f"seed {s['seed']}: teacher test accuracy {s['teacher_acc']:.2f}%, student test accuracy "
              f"{s['student_acc']:.2f}% ({s['iterations']} {unit}s, {s['seconds']:.0f} s, "
              f"{s[f'{unit}s_per_second']:.2f} {short}/s)")
    if len(summaries) > 1:
        accs = [s["student_acc"] for s in summaries]
        print(f"student test accuracy over {len(accs)} seeds: {statistics.fmean(accs):.2f} ± "
              f"{statistics.pstdev(accs):.2f}%")
        atomic_write_text(out / "summary.json", json.dumps(
            {"student_acc_mean": statistics.fmean(accs), "student_acc_std": statistics.pstdev(accs),
             "seeds": [s["seed"] for s in summaries], "runs": summaries}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    if args.list_nodes:
        with errors_as_messages(parser, debug=args.debug):
            print(list_nodes(args.list_nodes, args))
        return 0
    with process_group_closed_at_exit(), errors_as_messages(parser, debug=args.debug) as ending:
        world = _join_processes(args)
        writer = world is None or world.is_writer
        ending.quiet = not writer and args.parallel == "data"
        # Rank 0 speaks for a data-parallel run; in a seed-parallel one each process reports its own seeds.
        say = print if writer or args.parallel == "seeds" else (lambda *a, **k: None)
        out = output_folder(args, world)
        with left_as_found(out, enabled=writer, keep_on=(KeyboardInterrupt, RunInterrupted)):
            plan = plan_resumed_run(Path(args.resume)) if args.resume else plan_new_run(args, out, world)
            again = parser.prog if world is None else \
                f"torchrun --nproc-per-node {world.size} -m {parser.prog.split()[-1]}"
            ending.continue_with = f"{again} --resume {plan[0].folder if len(plan) == 1 else out}"
            everything = plan
            if world is not None:
                torch.distributed.barrier()  # run.json written, a digits teacher pretrained: the others may look
                if args.parallel == "seeds":  # independent runs from here on: nothing to wait for together
                    torch.distributed.destroy_process_group()
                    plan = plan[world.rank::world.size]
                    say(f"{world.size} processes share {len(everything)} seed(s): rank r runs seeds r, "
                        f"r + {world.size}, ...")
            summaries = run_seeds(plan, args, world, say)
        if not writer:
            return 0
        if world is not None and args.parallel == "seeds":
            summaries = _wait_for_summaries([seed.folder for seed in everything])
        report(summaries, out)
    return 0


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has repeats: {args.seeds}")
    if args.resume:
        extra = [action.option_strings[0] for action in parser._actions
                 if action.option_strings and action.dest not in ("resume", "no_progress", "parallel", "help", "debug")
                 and getattr(args, action.dest) != action.default]
        if extra:
            parser.error(f"--resume continues a run with its saved settings, which cannot change: drop "
                         f"{', '.join(extra)}")


def list_nodes(arch: str, args: argparse.Namespace) -> str:
    info = dataset_info(args.dataset, image_size=args.image_size, channels=args.channels)
    net = build_classifier(arch, args.num_classes or info.num_classes or 10, info.channels)
    shape = (info.channels, info.image_size, info.image_size)
    return (f"{architecture_key(arch)} on {'x'.join(map(str, shape))} images ({args.dataset}):\n" +
            describe_network_nodes(net, shape))


def _join_processes(args: argparse.Namespace) -> World | None:
    """Under torchrun: joins the process group (data-parallel: the backend of the devices; seed-parallel: gloo, only to
    agree on the output folder and wait for a pretrained teacher) and makes --device this process's device."""
    if launched_ranks() is None:
        return None
    backend = args.dist_backend if args.parallel == "data" else "gloo"
    world, args.device = init_world(args.device, backend, args.dist_timeout_minutes)
    return world


def _wait_for_summaries(seed_dirs: list[Path], poll_seconds: float = 2.0) -> list[dict]:
    """Rank 0 of a seed-parallel run: the summaries of every seed, once their processes wrote them (torchrun ends the
    job if one of them fails)."""
    waiting = [d for d in seed_dirs if not (d / "summary.json").is_file()]
    if waiting:
        print(f"waiting for {len(waiting)} seed(s) run by the other processes: {', '.join(d.name for d in waiting)}")
    while any(not (d / "summary.json").is_file() for d in seed_dirs):
        time.sleep(poll_seconds)
    return [json.loads((d / "summary.json").read_text()) for d in seed_dirs]


if __name__ == "__main__":
    sys.exit(main())
