"""The student's steps of the synthesis-and-pool loop: KD against the teacher on augmented pool batches, SGD with
momentum and weight decay, the learning rate cosine-annealed once per round over the rounds after the warm-up (as
the published code steps its scheduler)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ...data import normalise
from ..lifecycle.distributed import World, average_gradients
from ..lifecycle.speed import AMP_DTYPES, autocast
from .pool import ImagePool, augment
from .weight_average import WeightAverage

KD_MOMENTUM, KD_MIN_LR = 0.9, 2e-4  # the pool methods' student: SGD momentum, cosine down to this learning rate
KD_DECAY = 0.1  # the factor of each milestone of a step schedule


class PoolStudentSteps:
    """The student's steps on pool batches: KD (T^2 KL at T, or L1) against the teacher on the same augmented batch,
    SGD with momentum and weight decay, the learning rate cosine-annealed over the rounds after the warm-up."""

    def __init__(self, teacher: nn.Module, student: nn.Module, student_loss: Callable, steps, rounds, *, normalisation,
                 augmentation: str, device: torch.device, world: World | None, seed: int):
        """`student_loss`: the method's (methods/objectives.py: StudentLoss); `steps`, `rounds`: the resolved
        StepSettings and PoolSettings."""
        self.teacher, self.student, self.student_loss = teacher, student, student_loss
        self.steps, self.rounds = steps, rounds
        self.mean, self.std = normalisation
        self.augmentation, self.device, self.world = augmentation, torch.device(device), world
        self.optimizer = torch.optim.SGD(student.parameters(), lr=rounds.kd_lr, momentum=KD_MOMENTUM,
                                         weight_decay=rounds.kd_weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type) if AMP_DTYPES[steps.amp] == torch.float16 else None
        self.draws = torch.Generator().manual_seed(seed)
        self.average = WeightAverage(student, steps.student_ema) if steps.student_ema else None
        self._forward = self._loss
        if steps.compile != "off":
            from ...ops import key_compile_caches_by_build
            key_compile_caches_by_build()
            self._forward = torch.compile(self._loss, mode=steps.compile, fullgraph=False)

    def set_learning_rate(self, round_index: int, rounds: int) -> float:
        """Cosine from kd_lr at the first round after the warm-up to 2e-4 at the end, one value per round (as the
        published code steps its scheduler once per round); with kd_milestones, kd_lr divided by 10 at each
        milestone (a fraction of the rounds after the warm-up) that the round has reached (CMI's MultiStepLR)."""
        warmup = self.rounds.warmup
        if self.rounds.kd_milestones:
            reached = sum(round_index - warmup >= round(m * (rounds - warmup)) for m in self.rounds.kd_milestones)
            lr = self.rounds.kd_lr * KD_DECAY ** reached
        else:
            progress = (round_index - warmup) / max(rounds - warmup, 1)
            lr = KD_MIN_LR + (self.rounds.kd_lr - KD_MIN_LR) * (1 + math.cos(math.pi * progress)) / 2
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _loss(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.steps.amp):
            with torch.no_grad():
                teacher_logits, _ = self.teacher(inputs)
            logits, _ = self.student(inputs)
            loss = self.student_loss(logits, teacher_logits, [], [])
        return loss, logits, teacher_logits

    def step(self, pool: ImagePool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD step on an augmented pool batch; returns the loss and both networks' logits."""
        inputs = normalise(augment(pool.sample(), self.augmentation, self.draws), self.mean, self.std)
        if self.steps.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        loss, logits, teacher_logits = self._forward(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        params = list(self.student.parameters())
        if self.scaler is None:
            loss.backward()
            if self.world is not None:
                average_gradients(params, self.world)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if self.world is not None:
                average_gradients(params, self.world)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.average is not None:
            self.average.update()
        return loss.detach(), logits.detach(), teacher_logits.detach()

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "draws": self.draws.get_state(),
                **({"student_average": self.average.state_dict()} if self.average is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.draws.set_state(state["draws"])
        if self.average is not None:
            self.average.load_state_dict(state["student_average"])
