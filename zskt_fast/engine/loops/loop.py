"""The two loops of the data-free methods.

Algorithm 1 of the paper (ZSKT, and DFAD, DAFL, DFQ in its shape): per iteration, one noise batch z; n_G Adam steps of
the generator G on -KL(T(G(z)) || S(G(z))); then n_S Adam steps of the student S on KL(T(x) || S(x)) + beta * sum_l
AT_l(x), x = G(z); the learning rates cosine-annealed over the iterations.

Synthesis and pool (FastDFKD, DeepInversion): per round, one batch synthesised against the teacher in n_G steps (and,
after the warm-up rounds, against the student) joins the pool; then n_S student steps of KD on augmented pool
batches.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from .steps import AlgorithmOneSteps


class PoolRounds(Protocol):
    """What the synthesis-and-pool loop drives (engine/methods/pool_strategy.py: PoolMethod)."""
    pool: object            # add(images), sample()
    student_steps: object   # set_learning_rate(round, rounds), step(pool)
    adversarial_lead: int   # rounds before the student's first that the adversarial term joins

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One round's batch (this rank's share, pixels in [0, 1]) and its synthesis loss."""


def zero_shot_knowledge_transfer(steps: AlgorithmOneSteps, *, iterations: int, n_generator_steps: int,
                                 n_student_steps: int, start: int = 0, stop: int | None = None,
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


def synthesis_and_pool(method: PoolRounds, *, rounds: int, warmup: int, n_student_steps: int, start: int = 0,
                       stop: int | None = None,
                       on_round_end: Callable[[int, dict[str, torch.Tensor | None]], None] | None = None) -> None:
    """Runs rounds [start, stop) of `rounds` (counted from 0); after each one calls on_round_end(round, outputs), where
    outputs hold the synthesis loss, the round's images, and (after the warm-up) the last student loss and both
    networks' logits. The student's steps start at round `warmup` counted from 0, the adversarial term
    `method.adversarial_lead` rounds before (FastDFKD's published loop: one round, NAYER's: none)."""
    for round_index in range(start, rounds if stop is None else stop):
        trains = round_index >= warmup                           # the warm-up rounds only fill the pool
        adversarial = round_index + method.adversarial_lead >= warmup
        images, loss_synthesis = method.synthesise(round_index, adversarial=adversarial)  # n_G steps against T (& S)
        method.pool.add(images)                                  # the round's lowest-loss batch joins the pool
        loss_S = student_logits = teacher_logits = None
        if trains:
            method.student_steps.set_learning_rate(round_index, rounds)  # cosine over the rounds after the warm-up
            for _ in range(n_student_steps):
                loss_S, student_logits, teacher_logits = method.student_steps.step(method.pool)  # KD on pool batches
        if on_round_end is not None:
            on_round_end(round_index, {"loss_synthesis": loss_synthesis, "loss_S": loss_S, "images": images,
                                       "student_logits": student_logits, "teacher_logits": teacher_logits})
