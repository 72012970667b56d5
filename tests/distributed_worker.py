"""A small data-parallel run for the distributed tests: `torchrun --nproc-per-node N tests/distributed_worker.py OUT
[--float64] [--no-sync-bn] [--iterations K] [--stop K] [--method M]`, or plain `python` for the one-process run it must
equal.
Rank 0 saves the final student and generator weights and the losses of every iteration to OUT/result.pt; with a pool
method (fast, deepinversion: 2 rounds, the first a warm-up) the synthesis losses and every round's images, gathered
from the ranks in rank order."""
import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zskt_fast  # noqa: E402
from zskt_fast.engine.methods import generator_strategy  # noqa: E402
from zskt_fast.engine.methods import pool_strategy  # noqa: E402
from zskt_fast.engine.methods.registry import METHODS, methods_with_rounds  # noqa: E402
from zskt_fast.engine.lifecycle.distributed import init_world, launched_ranks  # noqa: E402
from zskt_fast.models import build_classifier  # noqa: E402

from conftest import Killed, kill_after  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--no-sync-bn", action="store_true")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--stop", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--method", default="zskt")
    args = parser.parse_args()
    if args.float64:
        torch.set_default_dtype(torch.float64)
    if launched_ranks() is not None:
        init_world("cpu", "gloo", timeout_minutes=2)
    losses = []
    loop = generator_strategy.zero_shot_knowledge_transfer

    def recording_loop(steps, **kwargs):
        user = kwargs.pop("on_iteration_end")

        def record(iteration, outputs):
            losses.append((outputs["loss_G"].item(), outputs["loss_S"].item()))
            user(iteration, outputs)
        return loop(steps, on_iteration_end=record, **kwargs)

    generator_strategy.zero_shot_knowledge_transfer = recording_loop
    rounds, pool_loop = [], pool_strategy.synthesis_and_pool

    def recording_rounds(method, **kwargs):
        user = kwargs.pop("on_round_end")

        def record(round_index, outputs):
            images = outputs["images"]
            if dist.is_initialized():
                shares = [torch.empty_like(images) for _ in range(dist.get_world_size())]
                dist.all_gather(shares, images.contiguous())
                images = torch.cat(shares)
            rounds.append((outputs["loss_synthesis"].item(), images))
            user(round_index, outputs)
        return pool_loop(method, on_round_end=record, **kwargs)

    pool_strategy.synthesis_and_pool = recording_rounds
    pool = {"warmup": 1, "pool_size": 16, "n_generator_steps": 2, "iterations": 2} \
        if args.method in methods_with_rounds() else {"iterations": args.iterations}
    if "loops" in METHODS[args.method].strategy.round_options:  # two loops a round, the student's mode changing
        pool |= {"synthesis_batch": 8, "warmup_loops": 2, "loops": 2, "label_embedding": "one-hot"}
    torch.manual_seed(0)
    teacher, student = build_classifier("wrn-10-1", in_channels=1), build_classifier("wrn-10-1", in_channels=1)
    try:
        result = zskt_fast.distill(teacher, student, image_shape=(1, 8, 8), **pool,
                                   batch_size=args.batch_size, n_student_steps=2, z_dim=16, compile="off",
                                   backend="eager" if args.float64 else "auto", sync_bn=not args.no_sync_bn,
                                   amp="off", progress=False, out=Path(args.out) / "run", checkpoint_every=1,
                                   resume=args.resume, tensorboard=False, method=args.method,
                                   callbacks=[kill_after(args.stop)] if args.stop else [])
    except Killed:  # as a kill after that iteration: its checkpoint is what is left
        if dist.is_initialized():
            dist.destroy_process_group()
        return
    if args.method in methods_with_rounds():
        if not dist.is_initialized() or dist.get_rank() == 0:
            generator = result.generator.state_dict() if result.generator is not None else {}
            torch.save({"losses": torch.tensor([loss for loss, _ in rounds]),
                        "images": [images for _, images in rounds], "generator": generator},
                       Path(args.out) / "result.pt")
        if dist.is_initialized():
            dist.destroy_process_group()
        return
    # the losses each rank saw, averaged over ranks: the losses of the global batch
    mean_losses = torch.tensor(losses)
    if dist.is_initialized():
        dist.all_reduce(mean_losses)
        mean_losses /= dist.get_world_size()
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({"student": result.student.state_dict(), "generator": result.generator.state_dict(),
                    "losses": mean_losses, "types": sorted({type(m).__name__ for m in result.student.modules()})},
                   Path(args.out) / "result.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
