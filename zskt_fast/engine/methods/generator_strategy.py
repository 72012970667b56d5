"""The strategy of ZSKT, DFAD, DAFL and DFQ: a generator trained on the method's weighted objective inside Algorithm
1's loop (engine/loops/loop.py: zero_shot_knowledge_transfer), its steps eager, compiled or replayed from CUDA
graphs. Run folder: images/iter_NNNNNN.png (the generator's images of one fixed noise batch at each evaluation)."""
from __future__ import annotations

import torch
from torch import nn

from ...common import eval_mode
from ...models import Generator
from ..lifecycle.metrics import MetricsWindow
from ..lifecycle.reporter import Reporter
from ..lifecycle.schedules import cosine_lr
from ..lifecycle.distributed import mean_over_ranks
from ..loops.graphs import GraphedAlgorithmOneSteps
from ..loops.loop import zero_shot_knowledge_transfer
from ..loops.steps import AlgorithmOneSteps
from .objectives import GeneratorObjective, StudentLoss
from .strategy import Assembly, Strategy

GRID_SAMPLES = 64


def algorithm_one_steps(teacher: nn.Module, student: nn.Module, generator: nn.Module, objectives, steps, *, device,
                        seed: int, world=None, graphed: bool = False) -> AlgorithmOneSteps:
    """The steps of Algorithm 1 for resolved ObjectiveSettings and StepSettings: the method's generator objective and
    student loss, eager or compiled, or `graphed` (replayed from CUDA graphs)."""
    steps_class = GraphedAlgorithmOneSteps if graphed else AlgorithmOneSteps
    world = world if world is not None and world.size > 1 else None
    objective = GeneratorObjective(objectives, steps, teacher, torch.device(device), world)
    return steps_class(teacher, student, generator, steps, device, seed=seed, world=world, objective=objective,
                       student_loss=StudentLoss(objectives, steps))


class AlgorithmOneTrainee:
    """What Algorithm 1's run shows its reporter: the steps' networks, the metrics window of the iterations since the
    last log record, the generator's images of a fixed noise batch, the steps' checkpoint state."""
    grid_prefix = "iter"

    def __init__(self, steps: AlgorithmOneSteps, config, run, normalisation):
        self.steps, self.config, self.world, self.normalisation = steps, config, run.world, normalisation
        self.teacher, self.student, self.generator = steps.teacher, steps.student, steps.generator
        self.tested_student = steps.average.module if steps.average is not None else steps.student
        self.window = MetricsWindow(run.device)
        if run.state is not None and "accumulator" in run.state:
            self.window.load_state_dict(run.state["accumulator"])
        self.grid_z = torch.randn(GRID_SAMPLES, config.steps.z_dim,
                                  generator=torch.Generator().manual_seed(config.run.seed + 1)).to(run.device)

    def collect(self, outputs: dict) -> None:
        self.window.add(outputs)

    def metrics(self, iteration: int, outputs: dict) -> tuple[dict, dict[str, str]]:
        mean_over_ranks(self.window.sums, self.world)
        steps, total = self.config.steps, self.config.loop.iterations
        values = {**self.window.pop(), "lr_generator": cosine_lr(steps.generator_lr, iteration, total),
                  "lr_student": cosine_lr(steps.student_lr, iteration, total)}
        return values, {"loss_generator": "loss_G", "loss_student": "loss_S"}

    def grid(self):
        with torch.no_grad(), eval_mode(self.generator):
            return (self.generator(self.grid_z), *self.normalisation)

    def note(self) -> str:
        return ""

    def state_dict(self) -> dict:
        """Every rank then holds the window's mean so far, which the checkpoint keeps for all of them."""
        mean_over_ranks(self.window.sums, self.world)
        return {"steps": self.steps.state_dict(), "accumulator": self.window.state_dict()}

    def write_final(self, folder) -> None:
        pass  # student.pt and generator.pt are the reporter's

    def summary(self) -> dict:
        return {}


class GeneratorObjectiveStrategy(Strategy):
    """A generator trained on a weighted objective, n_G steps per iteration of Algorithm 1."""
    momentum_generator = True

    def make_generator(self, config, image_shape, num_classes: int | None) -> nn.Module:
        """The paper's generator: images in the teacher's input space."""
        return Generator(config.steps.z_dim, image_shape[1], image_shape[0], output="batchnorm")

    def run(self, parts: Assembly) -> dict:
        config, run = parts.config, parts.run
        steps = algorithm_one_steps(parts.teacher, parts.student, parts.generator, config.objectives, config.steps,
                                    device=run.device, seed=config.run.seed, world=parts.world,
                                    graphed=config.steps.cuda_graphs)
        try:
            if run.state is not None:
                steps.load_state_dict(run.state["steps"])
            if config.steps.cuda_graphs:
                steps.set_learning_rates(run.start, config.loop.iterations)
                steps.capture(generator_passes=config.loop.n_student_steps)
            reporter = Reporter(run, AlgorithmOneTrainee(steps, config, run, parts.normalisation), config,
                                parts.test_data, parts.normalisation, parts.callbacks)
            with run:
                zero_shot_knowledge_transfer(steps, iterations=config.loop.iterations,
                                             n_generator_steps=config.loop.n_generator_steps,
                                             n_student_steps=config.loop.n_student_steps, start=run.start,
                                             on_iteration_end=reporter.after)
                return reporter.finish({**parts.names, "seed": config.run.seed}, parts.pairs)
        finally:
            steps.objective.remove_hooks()  # the teacher is the caller's network


GENERATOR_OBJECTIVE = GeneratorObjectiveStrategy()
