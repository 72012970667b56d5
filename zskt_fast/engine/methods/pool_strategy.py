"""The strategies that synthesise in rounds into a pool (engine/loops/loop.py: synthesis_and_pool): FastDFKD's
meta-learned generator (MetaGenerator) and DeepInversion's optimised images (ImageInversion) here, NAYER's and CMI's
in nayer.py and contrastive.py; their pieces built from the settings and run inside the same Run lifecycle and
reporter as Algorithm 1.

Run folder, besides Algorithm 1's files: the pool inside checkpoint.pt (8-bit pixels), images/round_NNNNNN.png (the
newest pool images at each evaluation), pool.png (images spread over the whole pool, at the end); generator.pt holds
FastDFKD's meta generator, NAYER's label generator or CMI's last round's generator (DeepInversion has none).
"""
from __future__ import annotations

import torch
from torch import nn

from ...common import eval_mode
from ...data import INFO as DATASET_INFO
from ...models import Generator
from ..lifecycle.distributed import World, check_global_batch, mean_over_ranks
from ..lifecycle.metrics import save_image_grid
from ..lifecycle.reporter import Reporter
from ..loops.loop import synthesis_and_pool
from ..loops.pool import ImagePool, pool_memory
from ..loops.pool_steps import PoolStudentSteps
from .objectives import GeneratorObjective, StudentLoss
from .strategy import Assembly, Strategy, pixels
from .synthesis import ImageSynthesis, MetaGeneratorSynthesis

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

    def __init__(self, synthesis_class, teacher: nn.Module, student: nn.Module, generator: nn.Module | None, config,
                 *, image_shape, num_classes: int, normalisation, augmentation: str, device: torch.device,
                 world: World | None):
        self.teacher, self.student, self.config, self.world = teacher, student, config, world
        steps, rounds, objectives, seed = config.steps, config.pool, config.objectives, config.run.seed
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
        self.synthesis = synthesis_class(generator, teacher, student, self.objective, steps, rounds, **common)
        self.pool = ImagePool(rounds.pool_size // ranks, image_shape, steps.batch_size // ranks, device,
                              seed=_seed(seed, 2, rank))
        self.adversarial_lead = synthesis_class.adversarial_lead
        self.student_steps = PoolStudentSteps(teacher, student, StudentLoss(objectives, steps), steps, rounds,
                                              normalisation=normalisation, augmentation=augmentation, device=device,
                                              world=world, seed=_seed(seed, 3, rank))

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One round's synthesis, with the student in eval mode (its running statistics, as the published code)."""
        with eval_mode(self.student):
            return self.synthesis.synthesise(round_index, adversarial)

    # -- what the reporter shows and writes (lifecycle/reporter.py) ---------------------------------------------------
    grid_prefix = "round"

    @property
    def generator(self) -> nn.Module | None:
        return self.synthesis.generator

    @property
    def tested_student(self) -> nn.Module:
        average = self.student_steps.average
        return average.module if average is not None else self.student

    def collect(self, outputs: dict) -> None:
        pass  # a round's record holds its own last losses

    def metrics(self, round_index: int, outputs: dict) -> tuple[dict, dict[str, str]]:
        losses = {"loss_synthesis": outputs["loss_synthesis"]}
        if outputs["loss_S"] is not None:
            losses["loss_student"] = outputs["loss_S"]
        values = {k: float(mean_over_ranks(v.detach().float().reshape(()).clone(), self.world))
                  for k, v in losses.items()}
        values.update({"lr_student": self.student_steps.optimizer.param_groups[0]["lr"],
                       "pool_images": self.pool.count})
        return values, {k: k for k in losses}

    def grid(self):
        return pixels(self.pool.newest(GRID_IMAGES))

    def note(self) -> str:
        return f", {self.pool.count:,} images in the pool"

    def write_final(self, folder) -> None:
        images, mean, std = pixels(self.pool.spread(POOL_GRID_IMAGES))
        save_image_grid(images, folder / "pool.png", mean=mean, std=std)

    def summary(self) -> dict:
        return {"pool_images": self.pool.count}

    def state_dict(self) -> dict:
        return {"pool_method": {"synthesis": self.synthesis.state_dict(),
                                "student_steps": self.student_steps.state_dict(),
                                "pool": self.pool.state_dict(), "objective": self.objective.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        state = state["pool_method"]
        self.synthesis.load_state_dict(state["synthesis"])
        self.student_steps.load_state_dict(state["student_steps"])
        self.pool.load_state_dict(state["pool"])
        self.objective.load_state_dict(state["objective"])


class PoolStrategy(Strategy):
    """Rounds of synthesis (the `synthesis_class`'s) into a bounded pool, each followed by n_S student steps on
    augmented pool batches; `generator_output`: the generator it trains ('sigmoid': pixels), None for none."""
    unit = "round"
    captures_cuda_graphs = False     # each round copies the generator or makes new images to optimise
    round_terms = True
    student_reads_features = False   # the student trains on pool batches
    evaluates_every_round = True     # few, long rounds, as the published code tests them
    compiled_unit = "student steps"
    needs_classes = True             # random or balanced targets of the teacher's classes

    def __init__(self, synthesis_class, generator_output: str | None):
        self.synthesis_class, self.generator_output = synthesis_class, generator_output

    def make_generator(self, config, image_shape, num_classes: int | None) -> nn.Module | None:
        if self.generator_output is None:
            return None
        return Generator(config.steps.z_dim, image_shape[1], image_shape[0], output=self.generator_output)

    def compiled_steps(self, loop) -> int:
        return loop.iterations * loop.n_student_steps  # the synthesis runs eagerly

    def check_world(self, config, world_size: int) -> None:
        check_global_batch(config.pool.pool_size, world_size, "pool_size")
        check_global_batch(config.pool.synthesis_batch, world_size, "synthesis_batch")

    def describe(self, config) -> str:
        loop = config.loop
        pool = config.pool
        loops = "" if pool.loops == pool.warmup_loops == 1 else \
            f" ({pool.warmup_loops} loops a warm-up round, {pool.loops} after)"
        return (f"{loop.iterations} rounds of {loop.n_generator_steps} synthesis{loops} and {loop.n_student_steps} "
                f"student steps ({pool.warmup} warm-up rounds), a pool of up to {pool.pool_size:,} images")

    def run(self, parts: Assembly) -> dict:
        config, run, image_shape = parts.config, parts.run, parts.image_shape
        augmentation = pool_augmentation(config.pool.augmentation, parts.names["dataset"], image_shape[1])
        method = PoolMethod(self.synthesis_class, parts.teacher, parts.student, parts.generator, config,
                            image_shape=image_shape, num_classes=parts.num_classes,
                            normalisation=parts.normalisation, augmentation=augmentation, device=run.device,
                            world=parts.world)
        try:
            if run.state is not None:
                method.load_state_dict(run.state)
            reporter = Reporter(run, method, config, parts.test_data, parts.normalisation, parts.callbacks)
            with run:
                run.say(f"pool: up to {config.pool.pool_size:,} images, "
                        f"{pool_memory(config.pool.pool_size, image_shape)} as 8-bit pixels; augmentation "
                        f"{augmentation}")
                synthesis_and_pool(method, rounds=config.loop.iterations, warmup=config.pool.warmup,
                                   n_student_steps=config.loop.n_student_steps, start=run.start,
                                   on_round_end=reporter.after)
                parts.generator = method.generator
                return reporter.finish({**parts.names, "seed": config.run.seed}, parts.pairs)
        finally:
            method.objective.remove_hooks()  # the teacher is the caller's network
            method.synthesis.remove_hooks()


META_GENERATOR = PoolStrategy(MetaGeneratorSynthesis, generator_output="sigmoid")
IMAGE_INVERSION = PoolStrategy(ImageSynthesis, generator_output=None)
