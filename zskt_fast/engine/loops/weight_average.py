"""A weight-averaged student (`--student-ema DECAY`, every method): an exponential moving average of the student's
weights, updated after every student step, which the run then tests, reports and saves as the student.

    average <- d_n * average + (1 - d_n) * weights,   d_n = min(DECAY, (1 + n) / (10 + n))

n counts the updates before this one. The warm-up of d_n (as timm's ModelEmaV2 and the EMA teachers of
semi-supervised learning use it) lets the average leave the student's random initial weights within the first tens
of steps, which matters on short runs (the digits presets' 1,350 to 8,000 student steps). Floating-point buffers
(BatchNorm's running statistics) are averaged the same way; the others (num_batches_tracked) are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_STEPS = 10  # d_n's warm-up: (1 + n) / (WARMUP_STEPS + n)


class WeightAverage:
    """The moving average of `net`'s weights at `decay`; `module` is a network of the same kind holding it."""

    def __init__(self, net: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"student_ema must be in (0, 1), got {decay!r}")
        self.source, self.decay, self.updates = net, decay, 0
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(averaged, live) floating-point tensors, and (averaged, live) other buffers."""
        averaged = [*self.module.parameters(), *self.module.buffers()]
        live = [*self.source.parameters(), *self.source.buffers()]
        floating = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        others = [i for i, t in enumerate(averaged) if not t.is_floating_point()]
        return ([averaged[i] for i in floating], [live[i] for i in floating], [averaged[i] for i in others],
                [live[i] for i in others])

    @torch.no_grad()
    def update(self) -> None:
        """One update, after a student step."""
        rate = 1.0 - min(self.decay, (1 + self.updates) / (WARMUP_STEPS + self.updates))
        averaged, live, kept, counted = self._pairs()
        for target, source in zip(averaged, live):
            target.lerp_(source.detach(), rate)
        for target, source in zip(kept, counted):
            target.copy_(source)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
