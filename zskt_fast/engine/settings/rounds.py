"""The settings of the rounds of the methods that synthesise into a pool (fast, deepinversion): synthesis, pool, and
the student's SGD; the defaults from each method's registry entry (its rounds on a data set)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...common import check_choice, check_count, check_non_negative, check_positive, option
from ..loops.pool_steps import KD_MIN_LR
from ..methods.registry import METHODS, digits_values, methods_with_rounds, rounds_values
from .parts import POOL, Context, copy_of
from .zero_shot import LoopSettings, StepSettings


POOL_AUGMENTATIONS = ("auto", "crop+flip", "crop", "shift", "none")


@dataclass
class PoolSettings:
    """The rounds of the pool methods (fast, deepinversion): synthesis, pool, and the student's SGD."""
    synthesis_lr: float | None = option(None, "Adam learning rate of the generator copy (fast) or of the images "
                                              f"(deepinversion); default {rounds_values('synthesis_lr')}",
                                        group=POOL)
    z_lr: float | None = option(None, "fast: Adam learning rate of the round's latent codes; default "
                                      f"{rounds_values('z_lr')}", group=POOL)
    kd_lr: float | None = option(None, "the student's SGD learning rate (momentum 0.9, cosine over the rounds after "
                                       f"the warm-up down to {KD_MIN_LR}); default: {rounds_values('kd_lr')}",
                                 group=POOL)
    kd_weight_decay: float | None = option(None, "the student's SGD weight decay; default "
                                                 f"{rounds_values('kd_weight_decay')}", group=POOL)
    warmup: int | None = option(None, "rounds of synthesis without student steps, the adversarial term joining in "
                                      "the last of them (FastDFKD's warm-up, as its loop counts); default: "
                                      f"{rounds_values('warmup')} (digits: {digits_values('warmup')}), at most the "
                                      "rounds less one", group=POOL)
    reset_round: int | None = option(None, "the round (counted from 1) whose synthesis starts by re-initialising "
                                           "the generator's first linear and BatchNorm layers (FastDFKD at 120 + "
                                           f"warm-up); 0: never; default: {rounds_values('reset_round')} (digits: "
                                           f"{digits_values('reset_round')})", group=POOL)
    pool_size: int | None = option(None, "images the pool keeps (the oldest go first once it is full), held as 8-bit "
                                         "pixels: C x H x W bytes each, in memory and in checkpoint.pt (50,000 "
                                         "CIFAR images: 146 MiB); default: every round's batch", group=POOL)
    augmentation: str = option("auto", "augmentation of pool batches (and of FastDFKD's synthesis input): random "
                                       "crops of 4-pixel padding and flips, crops alone, one-pixel shifts, or none; "
                                       "auto: the data set's pretraining recipe (crop+flip for CIFAR and image "
                                       "folders, crop for SVHN, shift for digits; for other networks crop+flip from "
                                       "16 pixels up, shift below)", group=POOL, choices=POOL_AUGMENTATIONS)

    def resolved(self, context: Context, loop: LoopSettings | None = None,
                 steps: StepSettings | None = None) -> PoolSettings:
        pool = copy_of(self)
        check_choice(pool.augmentation, POOL_AUGMENTATIONS, "augmentation")
        method = METHODS[context.method]
        preset = method.rounds_on(context.defaults.dataset)
        if preset is None:
            default = PoolSettings()
            given = [f.name for f in dataclasses.fields(pool) if getattr(pool, f.name) != getattr(default, f.name)]
            if given:
                raise ValueError(f"{', '.join(given)} applies to the pool methods ({', '.join(methods_with_rounds())}),"
                                 f" not to {method.name}")
            return pool
        rates = method.synthesis_learning_rates  # the published synthesis and z learning rates by n_G, if any
        steps_per_round = loop.n_generator_steps if loop is not None else method.n_generator_steps
        if rates and (pool.synthesis_lr is None or pool.z_lr is None):
            if steps_per_round not in rates:
                raise ValueError(f"{method.name} with {steps_per_round} generator steps per round: the published "
                                 f"learning rates are for {', '.join(map(str, rates))} steps; give synthesis_lr and "
                                 f"z_lr")
            synthesis_lr, z_lr = rates[steps_per_round]
            pool.synthesis_lr = synthesis_lr if pool.synthesis_lr is None else pool.synthesis_lr
            pool.z_lr = z_lr if pool.z_lr is None else pool.z_lr
        if pool.warmup is None and loop is not None:  # a short run keeps at least one round of student steps
            pool.warmup = min(preset.warmup, loop.iterations - 1)
        for name in ("synthesis_lr", "z_lr", "kd_lr", "kd_weight_decay", "warmup", "reset_round"):
            if getattr(pool, name) is None:
                setattr(pool, name, getattr(preset, name))
        for name in ("synthesis_lr", "kd_lr"):
            check_positive(getattr(pool, name), name)
        for name in ("z_lr", "kd_weight_decay"):
            check_non_negative(getattr(pool, name), name)
        check_count(pool.warmup, "warmup", minimum=0)
        check_count(pool.reset_round, "reset_round", minimum=0)
        if loop is not None and pool.warmup >= loop.iterations:
            raise ValueError(f"warmup {pool.warmup} leaves none of the {loop.iterations} rounds to train the student: "
                             f"give fewer warm-up rounds or more iterations")
        if steps is not None and loop is not None:
            if pool.pool_size is None:
                pool.pool_size = loop.iterations * steps.batch_size
            check_count(pool.pool_size, "pool_size")
            if pool.pool_size < steps.batch_size:
                raise ValueError(f"pool_size {pool.pool_size} is smaller than one batch ({steps.batch_size} images): "
                                 f"the student's batches are drawn from the pool; give pool_size >= batch_size")
        return pool


