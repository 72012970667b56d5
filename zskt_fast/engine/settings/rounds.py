"""The settings of the rounds of the methods that synthesise into a pool (fast, deepinversion): synthesis, pool, and
the student's SGD; the defaults from each method's registry entry (its rounds on a data set)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ...common import check_choice, check_count, check_non_negative, check_positive, option
from ..loops.pool_steps import KD_MIN_LR
from ..methods.registry import METHODS, digits_values, methods_with_rounds, rounds_values
from .parts import POOL, Context, copy_of
from .zero_shot import LoopSettings, StepSettings


POOL_AUGMENTATIONS = ("auto", "crop+flip", "crop", "shift", "none")
# The round settings whose default is the method's preset (registry.Rounds).
PRESET_ROUND_SETTINGS = ("synthesis_lr", "z_lr", "kd_lr", "kd_weight_decay", "warmup", "reset_round", "loops",
                         "warmup_loops", "generator_life", "noisy_width", "kd_milestones", "contrastive",
                         "contrastive_temperature", "head_dim", "bank_size", "negatives")
# Round settings that only some methods read (their strategies' round_options); the others refuse them.
METHOD_OPTIONS = ("loops", "warmup_loops", "generator_life", "noisy_width", "label_embedding", "kd_milestones",
                  "contrastive", "contrastive_temperature", "head_dim", "bank_size", "negatives")


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
    synthesis_batch: int | None = option(None, "images a synthesis step makes (the student's batches are "
                                               "batch_size); default: nayer 400 (digits 200), the batch size for "
                                               "the others", group=POOL)
    loops: int | None = option(None, "nayer: synthesis loops a round after the warm-up, each a fresh optimiser, "
                                     "new noisy layers and its own batch into the pool; default "
                                     f"{rounds_values('loops', only_readers=True)}", group=POOL)
    warmup_loops: int | None = option(None, "nayer: synthesis loops a warm-up round; default "
                                            f"{rounds_values('warmup_loops', only_readers=True)}", group=POOL)
    generator_life: int | None = option(None, "nayer: the whole generator is built again when the round, or the "
                                              "round less the warm-up, is a multiple of this (rounds counted from "
                                              "0); 0: never; default "
                                              f"{rounds_values('generator_life', only_readers=True)}", group=POOL)
    noisy_width: int | None = option(None, "nayer: outputs of each noisy layer of the label generator; default "
                                           f"{rounds_values('noisy_width', only_readers=True)}", group=POOL)
    label_embedding: str = option("random", "nayer: the generator's per-class input: a [classes, width] file "
                                            "(.pt with one tensor, or .txt/.csv with a row of numbers a class; "
                                            "the published runs use CLIP ViT-B/32's text embedding of 'a image of "
                                            "{class}'), 'random' (512 numbers a class from N(0, 1), the same for "
                                            "every run: needs nothing) or 'one-hot'", group=POOL)
    kd_milestones: list[float] | None = option(None, "cmi: fractions of the rounds after the warm-up at which the "
                                                     "student's learning rate drops tenfold (instead of the cosine); "
                                                     "default "
                                                     f"{rounds_values('kd_milestones', only_readers=True)}",
                                               group=POOL)
    contrastive: float | None = option(None, "cmi: weight of the contrastive term; default "
                                             f"{rounds_values('contrastive', only_readers=True)}", group=POOL)
    contrastive_temperature: float | None = option(None, "cmi: temperature of the contrastive term; default "
                                                         f"{rounds_values('contrastive_temperature', True)}",
                                                   group=POOL)
    head_dim: int | None = option(None, "cmi: outputs of the projection head; default "
                                        f"{rounds_values('head_dim', only_readers=True)}", group=POOL)
    bank_size: int | None = option(None, "cmi: features of earlier images the memory bank keeps; default "
                                         f"{rounds_values('bank_size', only_readers=True)}", group=POOL)
    negatives: int | None = option(None, "cmi: earlier images drawn from the bank for each step's contrastive term; "
                                         f"default {rounds_values('negatives', only_readers=True)}", group=POOL)
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
        _check_method_options(pool, method, preset)
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
        for name in PRESET_ROUND_SETTINGS:
            if getattr(pool, name) is None:
                setattr(pool, name, getattr(preset, name))
        _check_method_values(pool, method.strategy.round_options)
        for name in ("synthesis_lr", "kd_lr"):
            check_positive(getattr(pool, name), name)
        for name in ("z_lr", "kd_weight_decay"):
            check_non_negative(getattr(pool, name), name)
        check_count(pool.warmup, "warmup", minimum=0)
        check_count(pool.reset_round, "reset_round", minimum=0)
        if loop is not None and pool.warmup >= loop.iterations:
            raise ValueError(f"warmup {pool.warmup} leaves none of the {loop.iterations} rounds to train the student: "
                             f"give fewer warm-up rounds or more iterations")
        if steps is not None:
            pool.synthesis_batch = pool.synthesis_batch or preset.synthesis_batch or steps.batch_size
            check_count(pool.synthesis_batch, "synthesis_batch")
        if steps is not None and loop is not None:
            if pool.pool_size is None:  # every image synthesised
                warmup_rounds = min(pool.warmup, loop.iterations)
                pool.pool_size = pool.synthesis_batch * (warmup_rounds * pool.warmup_loops +
                                                         (loop.iterations - warmup_rounds) * pool.loops)
            check_count(pool.pool_size, "pool_size")
            if pool.pool_size < steps.batch_size:
                raise ValueError(f"pool_size {pool.pool_size} is smaller than one batch ({steps.batch_size} images): "
                                 f"the student's batches are drawn from the pool; give pool_size >= batch_size")
        return pool


def _check_method_values(pool: PoolSettings, reads: tuple[str, ...]) -> None:
    """The method-specific round settings, where the method reads them."""
    pool.kd_milestones = list(pool.kd_milestones)
    if any(not 0 < m < 1 for m in pool.kd_milestones):
        raise ValueError(f"kd_milestones must lie between 0 and 1 (fractions of the rounds), got {pool.kd_milestones}")
    if "contrastive" in reads:
        check_non_negative(pool.contrastive, "contrastive")
        check_positive(pool.contrastive_temperature, "contrastive_temperature")
        for name in ("head_dim", "bank_size", "negatives"):
            check_count(getattr(pool, name), name)
    for name in ("loops", "warmup_loops"):
        check_count(getattr(pool, name), name)
    check_count(pool.generator_life, "generator_life", minimum=0)
    if "noisy_width" in reads:
        check_count(pool.noisy_width, "noisy_width")
        check_label_embedding(pool.label_embedding)


def _check_method_options(pool: PoolSettings, method, preset) -> None:
    """A round setting that the method's synthesis does not read is refused (rather than ignored) unless it is the
    unset default or the method's own preset value (a resolved configuration, resumed)."""
    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value
    default = PoolSettings()
    for name in METHOD_OPTIONS:
        value = plain(getattr(pool, name))
        if value not in (plain(getattr(default, name)), plain(getattr(preset, name, None))) and \
                name not in method.strategy.round_options:
            readers = [m.name for m in METHODS.values() if name in m.strategy.round_options]
            raise ValueError(f"{name} applies to {', '.join(readers)}, not to {method.name}")


def check_label_embedding(setting: str) -> None:
    """'random', 'one-hot' or an existing file (its contents are read, and checked against the teacher's classes,
    when the generator is built, before any folder)."""
    if setting in ("random", "one-hot"):
        return
    path = Path(os.path.expanduser(setting))
    if not path.is_file():
        raise ValueError(f"label_embedding {setting!r}: give 'random', 'one-hot' or an existing embedding file")
