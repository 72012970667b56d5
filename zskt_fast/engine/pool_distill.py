"""zskt_fast.distill for the synthesis-and-pool methods (fast, deepinversion): their pieces built from the settings,
the rounds run (engine/loop.py: synthesis_and_pool) inside the same Run lifecycle as Algorithm 1, and what a round
reports and a run writes.

Run folder, besides Algorithm 1's files: the pool inside checkpoint.pt (8-bit pixels), images/round_NNNNNN.png (the
newest pool images at each evaluation), pool.png (images spread over the whole pool, at the end); generator.pt holds
FastDFKD's meta generator (DeepInversion has none).
"""
from __future__ import annotations

import torch
from torch import nn

from ..common import eval_mode
from ..data import INFO as DATASET_INFO
from ..models import unwrap
from .checkpoint import atomic_save, save_classifier
from .distributed import World, mean_over_ranks
from .evaluation import as_batches, evaluate
from .loop import synthesis_and_pool
from .metrics import save_image_grid
from .objectives import GeneratorObjective
from .pool import ImagePool, pool_memory
from .run import Run
from .synthesis import ImageSynthesis, MetaGeneratorSynthesis, PoolStudentSteps

GRID_IMAGES, POOL_GRID_IMAGES = 64, 256
SMALL_IMAGES = 16  # below this side, 'auto' augments by one-pixel shifts (digits' recipe), crops and flips above


def pool_augmentation(setting: str, dataset: str | None, side: int) -> str:
    """What augmentation 'auto' means: the data set's pretraining recipe, or by image size for other networks."""
    if setting != "auto":
        return setting
    if dataset in DATASET_INFO:
        return DATASET_INFO[dataset].augmentation
    return "crop+flip" if side >= SMALL_IMAGES else "shift"


def _seed(seed: int, stream: int, rank: int = 0) -> int:
    """Independent draws for each piece (and rank) from the run's seed."""
    return seed * 1_000_003 + stream * 10_007 + rank


class PoolMethod:
    """A pool method's pieces: the synthesis (with its generator objective), the pool, the student's steps; their
    state is one checkpoint entry."""

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module | None, config,
                 *, image_shape, num_classes: int, normalisation, augmentation: str, device: torch.device,
                 world: World | None):
        self.teacher, self.student, self.config, self.world = teacher, student, config, world
        steps, pool, objectives, seed = config.steps, config.pool, config.objectives, config.run.seed
        ranks = world.size if world is not None else 1
        rank = world.rank if world is not None else 0
        teacher.eval().requires_grad_(False)
        student.train()
        if steps.channels_last:
            for net in (teacher, student):
                net.to(memory_format=torch.channels_last)
        self.objective = GeneratorObjective(objectives, steps, teacher, device, world, average_per_round=True)
        common = dict(image_shape=image_shape, num_classes=num_classes, n_steps=config.loop.n_generator_steps,
                      normalisation=normalisation, augmentation=augmentation, device=device, world=world,
                      seed=_seed(seed, 1))
        if generator is not None:
            generator.train()
            self.synthesis = MetaGeneratorSynthesis(generator, teacher, student, self.objective, steps, pool, **common)
        else:
            self.synthesis = ImageSynthesis(teacher, student, self.objective, steps, pool, **common)
        self.pool = ImagePool(pool.pool_size // ranks, image_shape, steps.batch_size // ranks, device,
                              seed=_seed(seed, 2, rank))
        self.student_steps = PoolStudentSteps(teacher, student, objectives, steps, pool, normalisation=normalisation,
                                              augmentation=augmentation, device=device, world=world,
                                              seed=_seed(seed, 3, rank))

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One round's synthesis, with the student in eval mode (its running statistics, as the published code)."""
        with eval_mode(self.student):
            return self.synthesis.synthesise(round_index, adversarial)

    def state_dict(self) -> dict:
        return {"synthesis": self.synthesis.state_dict(), "student_steps": self.student_steps.state_dict(),
                "pool": self.pool.state_dict(), "objective": self.objective.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.synthesis.load_state_dict(state["synthesis"])
        self.student_steps.load_state_dict(state["student_steps"])
        self.pool.load_state_dict(state["pool"])
        self.objective.load_state_dict(state["objective"])


def distill_from_pool(teacher: nn.Module, student: nn.Module, generator: nn.Module | None, config, world: World | None,
                      run: Run, *, image_shape, num_classes: int, test_data, normalisation, augmentation: str,
                      callbacks, names: dict, pairs) -> dict:
    """Runs (or continues) a pool method's rounds in `run`; returns the summary."""
    method = PoolMethod(teacher, student, generator, config, image_shape=image_shape, num_classes=num_classes,
                        normalisation=normalisation, augmentation=augmentation, device=run.device, world=world)
    try:
        if run.state is not None:
            method.load_state_dict(run.state["pool_method"])
        outputs = _PoolOutputs(run, method, config, test_data, normalisation, callbacks)
        with run:
            run.say(f"pool: up to {config.pool.pool_size:,} images, {pool_memory(config.pool.pool_size, image_shape)}"
                    f" as 8-bit pixels; augmentation {augmentation}")
            synthesis_and_pool(method, rounds=config.loop.iterations, warmup=config.pool.warmup,
                               n_student_steps=config.loop.n_student_steps, start=run.start,
                               on_round_end=outputs.after_round)
            return outputs.finish({**names, "seed": config.run.seed}, pairs)
    finally:
        method.objective.remove_hooks()  # the teacher is the caller's network


class _PoolOutputs:
    """What a pool method's run reports after each round and writes at its end."""

    def __init__(self, run: Run, method: PoolMethod, config, test_data, normalisation, callbacks):
        self.run, self.method, self.config, self.callbacks = run, method, config, callbacks
        self.normalisation = normalisation
        self.loader = as_batches(test_data) if test_data is not None and run.is_writer else None
        self.teacher_acc = evaluate(method.teacher, self.loader, run.device) if self.loader is not None else None
        self.student_acc = run.history[-1]["student_acc"] if run.history else None

    def after_round(self, round_index: int, outputs: dict) -> None:
        done, every, last = round_index + 1, self.config.outputs, round_index + 1 == self.config.loop.iterations
        evaluate_now = done % every.eval_every == 0 or last
        if done % every.log_every == 0 or evaluate_now:
            losses = {"loss_synthesis": outputs["loss_synthesis"]}
            if outputs["loss_S"] is not None:
                losses["loss_student"] = outputs["loss_S"]
            values = {k: float(mean_over_ranks(v.detach().float().reshape(()).clone(), self.run.world))
                      for k, v in losses.items()}
            values.update({"lr_student": self.method.student_steps.optimizer.param_groups[0]["lr"],
                           "pool_images": self.method.pool.count})
            if evaluate_now:
                values.update(self._evaluate(done))
            record = self.run.log(done, values, check=tuple(losses))
            shown = {k: f"{record[k]:.3f}" for k in losses}
            self.run.show(**shown, **({"acc": f"{self.student_acc:.1f}"} if self.student_acc is not None else {}))
        for callback in self.callbacks:
            callback(done, outputs)
        self.run.iteration_done(done, self.state)

    def _evaluate(self, done: int) -> dict:
        values = {}
        if self.loader is not None:
            self.student_acc = evaluate(self.method.student, self.loader, self.run.device)
            self.run.evaluated(done, self.student_acc)
            values["student_acc"] = self.student_acc
            self.run.say(f"round {done}/{self.config.loop.iterations}: student test accuracy {self.student_acc:.2f}% "
                         f"(teacher {self.teacher_acc:.2f}%), {self.method.pool.count:,} images in the pool")
        if self.run.writes:
            self._grid(self.method.pool.newest(GRID_IMAGES), f"images/round_{done:06d}.png")
        return values

    def _grid(self, pixels: torch.Tensor, name: str) -> None:
        channels = pixels.shape[1]
        save_image_grid(pixels, self.run.folder / name, mean=(0.0,) * channels, std=(1.0,) * channels)

    def state(self) -> dict:
        return {"pool_method": self.method.state_dict()}

    def finish(self, names: dict, pairs) -> dict:
        run, config = self.run, self.config
        run.checkpoint(config.loop.iterations, self.state())
        if run.writes:
            mean, std = self.normalisation
            save_classifier(unwrap(self.method.student), run.folder / "student.pt", test_acc=self.student_acc,
                            arch=names["student"], dataset=names["dataset"], teacher=names["teacher"],
                            normalisation={"mean": list(mean), "std": list(std)})
            synthesis = self.method.synthesis
            if isinstance(synthesis, MetaGeneratorSynthesis):
                generator = synthesis.meta_generator
                atomic_save({"state_dict": {k: v.cpu() for k, v in generator.state_dict().items()},
                             "z_dim": generator.z_dim, "image_size": generator.image_size,
                             "channels": generator.channels, "output": generator.output}, run.folder / "generator.pt")
            self._grid(self.method.pool.spread(POOL_GRID_IMAGES), "pool.png")
        steps = config.steps
        return run.finish({**names, "method": config.objectives.method, "teacher_acc": self.teacher_acc,
                           "student_acc": self.student_acc, "iterations": config.loop.iterations,
                           "device": str(run.device), "amp": steps.amp, "cuda_graphs": False,
                           "backend": steps.backend, "attention_pairs": pairs, "pool_images": self.method.pool.count,
                           "history": run.history})
