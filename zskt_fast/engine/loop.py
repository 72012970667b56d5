"""Algorithm 1 of the paper: per iteration, one noise batch z; n_G Adam steps of the generator G on
-KL(T(G(z)) || S(G(z))); then n_S Adam steps of the student S on KL(T(x) || S(x)) + beta * sum_l AT_l(x), x = G(z);
the learning rates cosine-annealed over the iterations."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .steps import ZSKTSteps


def zero_shot_knowledge_transfer(steps: ZSKTSteps, *, iterations: int, n_generator_steps: int, n_student_steps: int,
                                 start: int = 0, stop: int | None = None,
                                 on_iteration_end: Callable[[int, dict[str, torch.Tensor]], None] | None = None
                                 ) -> None:
    """Runs iterations [start, stop) of the `iterations` that make up the schedule; after each one calls
    on_iteration_end(iteration, outputs), where outputs hold the last losses, logits and the iteration's images as
    device tensors."""
    for iteration in range(start, iterations if stop is None else stop):
        steps.set_learning_rates(iteration, iterations)         # cosine annealing, one value per iteration
        z = steps.sample_noise()                                # one z for every step of this iteration
        for _ in range(n_generator_steps):
            loss_G = steps.generator_step(z)                    # ascend KL(T || S) through G
        images, teacher = steps.images_and_teacher(z, n_student_steps)  # G fixed from here on: images, T(x) once
        for _ in range(n_student_steps):
            loss_S, student_logits = steps.student_step(images, teacher)  # descend KL + beta * sum AT
        if on_iteration_end is not None:
            on_iteration_end(iteration, {"loss_G": loss_G, "loss_S": loss_S, "student_logits": student_logits,
                                         "teacher_logits": teacher.logits, "images": images})
