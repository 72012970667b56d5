"""The one interface every method's strategy implements: how the method makes what its student learns from, and so
which loop runs it. A strategy answers the questions the settings and the programs have about a method; nothing
outside engine/methods/ asks for a method, or a kind of method, by name.

Two loops exist (engine/loops/loop.py): Algorithm 1's (GeneratorObjective: n_G generator steps on a weighted
objective, then n_S student steps on the same images) and the synthesis-and-pool rounds (MetaGenerator: FastDFKD's
meta-learned generator; ImageInversion: DeepInversion's optimised images; NoisyLabels: NAYER's label generator,
nayer.py; Contrastive: CMI's re-initialised generator and contrastive term, contrastive.py).
"""
from __future__ import annotations

import dataclasses
import torch
from torch import nn


@dataclasses.dataclass
class Assembly:
    """What distill has prepared for a strategy to run: the networks (paired), the resolved settings, the run, and
    what the run reports and records."""
    teacher: nn.Module
    student: nn.Module
    generator: nn.Module | None
    config: object            # the resolved ZeroShotSettings
    world: object | None      # the data-parallel ranks, or None
    run: object               # the Run
    image_shape: tuple[int, int, int]
    num_classes: int | None
    test_data: object
    normalisation: tuple[tuple[float, ...], tuple[float, ...]]
    callbacks: tuple
    names: dict               # teacher, student and data set names
    pairs: list               # the attention pairs


class Strategy:
    """How a method makes what its student learns from. Subclasses set the answers and run the loop."""
    unit = "iteration"               # what one step of its loop is called (the progress bar, the logs)
    captures_cuda_graphs = True      # its steps can replay from CUDA graphs
    round_terms = False              # random targets drawn per round, image priors, per-round adversarial terms
    student_reads_features = True    # the student's loss may read feature maps of the generated batch (kl-at)
    evaluates_every_round = False    # the student is tested after every loop step by default
    compiled_unit = "iterations"     # what compiled_steps counts
    momentum_generator = False       # MAD's momentum generator (generator_ema) can join its student's batches
    needs_classes = False            # it draws classes: distill finds the teacher's number when none is given
    round_options: tuple[str, ...] = ()  # the method-specific round settings it reads (settings/rounds.py)

    def make_generator(self, config, image_shape, num_classes: int | None) -> nn.Module | None:
        """The generator the method trains (settings from `config`, resolved), initialised from the global RNG;
        None when it has none."""
        raise NotImplementedError

    def compiled_steps(self, loop) -> int:
        """How many steps torch.compile would serve (what 'compile auto' weighs)."""
        return loop.iterations

    def check_world(self, config, world_size: int) -> None:
        """Refuses settings that a data-parallel run of world_size processes cannot split."""

    def describe(self, config) -> str:
        """The run's length, as its first line says it."""
        return f"{config.loop.iterations} iterations"

    def run(self, parts: Assembly) -> dict:
        """Runs (or continues) the method in parts.run; returns the summary."""
        raise NotImplementedError


def pixels(images: torch.Tensor) -> tuple[torch.Tensor, tuple, tuple]:
    """Images already in pixels, with the (mean, std) that leaves them as they are (for image grids)."""
    channels = images.shape[1]
    return images, (0.0,) * channels, (1.0,) * channels
