"""Learning-rate schedules, as closed forms of the step (so a resumed run continues exactly)."""
from __future__ import annotations

import math


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine annealing from base_lr at step 0 to 0 at `total_steps` (CosineAnnealingLR's closed form); constant 0
    after the end."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def step_lr(base_lr: float, step: int, total_steps: int, milestones=(0.3, 0.6, 0.8), factor: float = 0.2) -> float:
    """base_lr times `factor` at each milestone (a fraction of total_steps) passed."""
    progress = step / max(total_steps, 1)
    return base_lr * factor ** sum(progress >= m for m in milestones)
