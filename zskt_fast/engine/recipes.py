"""Recipes: the settings of each training method (zero-shot steps and loop, supervised SGD, pretraining, the
few-shot baseline) and of the comparisons built on them (transition curves, the paper's report)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..common import check_choice, check_count, check_non_negative, check_positive, option
from ..models import ARCHITECTURE_HELP, architecture_key
from ..ops import BACKENDS, DEFAULT_BETA, DEFAULT_TEMPERATURE, KD_ALPHA, KD_BETA, KD_TEMPERATURE
from .settings import ALGORITHM, DATA, METHOD, POOL, PROCESSES, SPEED, Context, copy_of, per_dataset
from .speed import (AMP_CHOICES, COMPILE_CHOICES, COMPILE_FROM_ITERATIONS, COMPILE_MODES_WITH_GRAPHS,
                    check_cuda_graphs, default_amp, default_compile)
from .transition_curves import DEFAULT_IMAGES, DEFAULT_STEP_SIZE, DEFAULT_STEPS, SOURCES

SCHEDULES = ("cosine", "step")
DIGITS_IMAGES = 300  # transition curves on digits, whose test set has 397 images
ALGORITHM_2 = "Algorithm 2 (defaults: the paper's)"


@dataclass(frozen=True)
class MethodPreset:
    """A data-free method as settings: the generator's (or the images') weighted terms, the student's loss, n_G and
    n_S, the batch, the noise dimension and the student's temperature, as its paper's published code runs them
    (docs/methods.md cites each number). shape 'generator': Algorithm 1's loop; 'pool': rounds of synthesis into a
    pool and student steps on pool batches (engine/loop.py: synthesis_and_pool)."""
    name: str
    title: str
    adversarial: float
    adversarial_loss: str
    bn_prior: float
    one_hot: float
    balance: float
    activation: float
    student_loss: str
    n_student_steps: int
    shape: str = "generator"
    one_hot_targets: str = "argmax"
    bn_momentum: float = 0.0
    tv: float = 0.0
    image_l2: float = 0.0
    n_generator_steps: int = 1
    batch_size: int = 128
    z_dim: int = 100
    temperature: float = DEFAULT_TEMPERATURE


ADVERSARIAL_LOSSES = ("kl", "kl-batch", "l1", "decision-kl", "competition")
STUDENT_LOSSES = ("kl-at", "kd", "l1")
ONE_HOT_TARGETS = ("argmax", "random")
GENERATOR_WEIGHTS = ("adversarial", "bn_prior", "one_hot", "balance", "activation", "tv", "image_l2")
METHODS = {preset.name: preset for preset in (
    MethodPreset("zskt", "ZSKT, Micaelli & Storkey 2019 (the paper's run)", adversarial=1.0, adversarial_loss="kl",
                 bn_prior=0.0, one_hot=0.0, balance=0.0, activation=0.0, student_loss="kl-at", n_student_steps=10),
    MethodPreset("dfad", "DFAD, Fang et al. 2019", adversarial=1.0, adversarial_loss="l1", bn_prior=0.0,
                 one_hot=0.0, balance=0.0, activation=0.0, student_loss="l1", n_student_steps=5),
    # The frameworks' DAFL scripts (Fast-Datafree scripts/dafl_cifar.sh; CMI scripts/dafl/): act 0.001.
    MethodPreset("dafl", "DAFL, Chen et al. 2019", adversarial=0.0, adversarial_loss="kl", bn_prior=0.0,
                 one_hot=1.0, balance=20.0, activation=0.001, student_loss="kd", n_student_steps=5),
    MethodPreset("dfq", "DFQ, Choi et al. 2020", adversarial=1.0, adversarial_loss="kl-batch", bn_prior=1.0,
                 one_hot=1.0, balance=20.0, activation=0.0, student_loss="kd", n_student_steps=10),
    # Fast-Datafree's scripts/fast_cifar.sh (the WRN-40-2 teacher's line), datafree_kd.py and fast_meta.py.
    MethodPreset("fast", "FastDFKD, Fang et al. 2022 (meta-learned generator, pool)", shape="pool",
                 adversarial=1.1, adversarial_loss="decision-kl", bn_prior=10.0, bn_momentum=0.9, one_hot=0.4,
                 one_hot_targets="random", balance=0.0, activation=0.0, student_loss="kd", n_student_steps=400,
                 n_generator_steps=5, batch_size=256, z_dim=256, temperature=20.0),
    # Fast-Datafree's scripts/deepinv_cifar.sh; the image priors' weights from DeepInversion's CIFAR-10 code.
    MethodPreset("deepinversion", "DeepInversion, Yin et al. 2020 (optimised images, pool)", shape="pool",
                 adversarial=1.0, adversarial_loss="competition", bn_prior=10.0, one_hot=1.0,
                 one_hot_targets="random", tv=2.5e-5, image_l2=0.0, balance=0.0, activation=0.0, student_loss="kd",
                 n_student_steps=400, n_generator_steps=1000, batch_size=256, z_dim=256, temperature=20.0),
)}
POOL_METHODS = tuple(name for name, preset in METHODS.items() if preset.shape == "pool")


def compile_context(context: Context, loop) -> Context:
    """The steps' context: what 'compile auto' weighs is the number of compiled steps, the iterations of Algorithm 1
    or the student steps of the pool methods (their synthesis runs eagerly)."""
    if METHODS[context.method].shape != "pool":
        return context
    return dataclasses.replace(context, iterations=loop.iterations * loop.n_student_steps)


@dataclass(frozen=True)
class PoolPreset:
    """What a pool method's rounds are on a data set: their number, the warm-up, the round whose start re-initialises
    the generator's first layer (0: none), the student's SGD, and the synthesis and latent learning rates (None:
    FastDFKD's, which go with its generator steps: FAST_LEARNING_RATES)."""
    iterations: int
    warmup: int
    reset_round: int
    kd_lr: float
    synthesis_lr: float | None = None
    z_lr: float | None = None
    kd_weight_decay: float = 1e-4


# FastDFKD's generator and latent learning rates go with its generator steps (fast_cifar.sh: Fast-2, -5, -10).
FAST_LEARNING_RATES = {2: (5e-3, 0.015), 5: (3e-3, 0.01), 10: (2e-3, 0.01)}
POOL_PRESETS = {
    # The published CIFAR runs: 220 rounds with 20 of warm-up, the generator's first layer re-initialised at 120 +
    # 20; DeepInversion 200 rounds; students by SGD at 0.2 / 0.1.
    ("fast", "cifar"): PoolPreset(iterations=220, warmup=20, reset_round=140, kd_lr=0.2),
    ("deepinversion", "cifar"): PoolPreset(iterations=200, warmup=0, reset_round=0, kd_lr=0.1, synthesis_lr=0.1,
                                           z_lr=0.0),
    # digits (8x8, 1,400 training images): fewer and shorter rounds, chosen by measurement (docs/methods.md).
    ("fast", "digits"): PoolPreset(iterations=30, warmup=3, reset_round=20, kd_lr=0.2),
    ("deepinversion", "digits"): PoolPreset(iterations=30, warmup=0, reset_round=0, kd_lr=0.1, synthesis_lr=0.1,
                                            z_lr=0.0),
}
DIGITS_POOL = {"fast": {"n_student_steps": 50, "n_generator_steps": 5},
               "deepinversion": {"n_student_steps": 50, "n_generator_steps": 50}}


def pool_preset(method: str, dataset: str) -> PoolPreset:
    """The rounds of a pool method on a data set: digits' own, the published CIFAR runs' for every other."""
    return POOL_PRESETS[(method, "digits" if dataset == "digits" else "cifar")]


def method_default(method: str, name: str, dataset: str):
    """A preset value of a method on a data set (digits shortens the pool methods' rounds)."""
    if dataset == "digits" and name in DIGITS_POOL.get(method, {}):
        return DIGITS_POOL[method][name]
    return getattr(METHODS[method], name)


def _preset_values(name: str) -> str:
    return "; ".join(f"{p.name} {getattr(p, name)}" for p in METHODS.values())


@dataclass
class StepSettings:
    """One iteration's steps of Algorithm 1: the paper's hyper-parameters, and how the steps run."""
    batch_size: int | None = option(None, "generated images per iteration (per round of the pool methods); default: "
                                          f"the method's ({_preset_values('batch_size')})", group=ALGORITHM)
    z_dim: int | None = option(None, f"noise dimension; default: the method's ({_preset_values('z_dim')})",
                               group=ALGORITHM)
    generator_lr: float = option(1e-3, "Adam learning rate of the generator, cosine-annealed to 0", group=ALGORITHM)
    student_lr: float = option(2e-3, "Adam learning rate of the student, cosine-annealed to 0 (the pool methods' "
                                     "student takes SGD at --kd-lr instead)", group=ALGORITHM)
    beta: float = option(DEFAULT_BETA, "attention-transfer weight; 0 disables it", group=ALGORITHM)
    temperature: float | None = option(None, "KL temperature of the student's loss; default: the method's "
                                             f"({_preset_values('temperature')})", group=ALGORITHM)
    grad_clip: float = option(5.0, "gradient-norm clip of both networks", group=ALGORITHM)
    backend: str = option("auto", "loss kernels: eager PyTorch, C++ cpu, cuda, triton, or auto (fastest for the "
                                  "device)", group=SPEED, choices=BACKENDS)
    amp: str = option("auto", "mixed precision; auto: bf16 on GPUs that support it and on CPUs with native bf16 "
                              "instructions (avx512_bf16, amx_bf16, Arm bf16; read from /proc/cpuinfo), off (float32) "
                              "elsewhere; the run's header says which and why", group=SPEED, choices=AMP_CHOICES)
    channels_last: bool | None = option(None, "channels_last memory format; default: on for CUDA and for bf16 on "
                                              "the CPU", group=SPEED)
    compile: str = option("auto", "torch.compile the three steps (networks, fused losses, clipping and Adam) with "
                                  "this mode, or off; auto: on the CPU, default for runs of "
                                  f"{COMPILE_FROM_ITERATIONS} iterations or more (the compilation, about a minute, "
                                  "pays off in long runs) and off for shorter ones; off on CUDA (eager steps in CUDA "
                                  "graphs). The pool methods compile their student step, counted in student steps",
                          group=SPEED,
                          choices=COMPILE_CHOICES)
    cuda_graphs: bool | None = option(None, "capture the generator and student steps as CUDA graphs; default: on "
                                            "for CUDA (off with fp16 and with compile modes that capture their own)",
                                      group=SPEED)

    def resolved(self, context: Context) -> StepSettings:
        steps = copy_of(self)
        preset = METHODS[context.method]
        for name in ("batch_size", "z_dim", "temperature"):
            if getattr(steps, name) is None:
                setattr(steps, name, getattr(preset, name))
        for name in ("batch_size", "z_dim"):
            check_count(getattr(steps, name), name)
        for name in ("generator_lr", "student_lr", "temperature", "grad_clip"):
            check_positive(getattr(steps, name), name)
        check_non_negative(steps.beta, "beta")
        check_choice(steps.amp, AMP_CHOICES, "amp")
        check_choice(steps.backend, BACKENDS, "backend")
        check_choice(steps.compile, COMPILE_CHOICES, "compile")
        device = context.device
        on_gpu = device.type == "cuda"
        if steps.amp == "auto":
            steps.amp = default_amp(device)
        pool = preset.shape == "pool"
        if steps.compile == "auto":  # context.iterations: the pool methods' student steps (compile_context)
            steps.compile = default_compile(device, context.iterations)
        if steps.channels_last is None:
            steps.channels_last = on_gpu or steps.amp == "bf16"  # oneDNN's bf16 convolutions want NHWC
        if steps.cuda_graphs is None:
            steps.cuda_graphs = (on_gpu and not pool and steps.amp != "fp16"
                                 and steps.compile not in COMPILE_MODES_WITH_GRAPHS)
        if steps.cuda_graphs and pool:
            raise ValueError(f"cuda_graphs: the pool methods ({context.method}) run their steps eagerly (each round "
                             f"copies the generator or makes new images to optimise); use --no-cuda-graphs")
        if steps.cuda_graphs:
            check_cuda_graphs(steps.amp, device, steps.compile)
        return steps


@dataclass
class ObjectiveSettings:
    """What the generator (or the images) and the student minimise: a method's preset, each of whose values can be
    overridden."""
    method: str = option("zskt", "the data-free method: " + "; ".join(f"{p.name}: {p.title}" for p in
                                                                        METHODS.values()) +
                         ". zskt, dfad, dafl and dfq run Algorithm 1's loop (n_G generator steps, then n_S student "
                         "steps on the same images) with this package's optimisers and schedule; fast and "
                         "deepinversion run rounds of synthesis into a pool, each followed by n_S student steps on "
                         "pool batches, with their published settings. A method sets the terms below, n_G and n_S",
                         group=METHOD, choices=tuple(METHODS))
    adversarial: float | None = option(None, "weight of the adversarial term (the generator seeks disagreement); "
                                             f"{_preset_values('adversarial')}", group=METHOD)
    adversarial_loss: str | None = option(None, "the adversarial term: kl, -KL(T || S) over samples and classes "
                                                "(ZSKT); kl-batch, -KL(T || S) per sample (DFQ's code); l1, -|t - s| "
                                                "(DFAD); decision-kl, -KL per sample on the samples where S and T "
                                                "agree (FastDFKD); competition, -JS(T, S) at T = 3 (DeepInversion); "
                                                f"{_preset_values('adversarial_loss')}", group=METHOD,
                                          choices=ADVERSARIAL_LOSSES)
    bn_prior: float | None = option(None, "weight of the batch-norm statistics prior (DeepInversion, DFQ): the "
                                          "distance of the batch statistics at the teacher's BatchNorm layers from "
                                          f"their running statistics; {_preset_values('bn_prior')}", group=METHOD)
    bn_momentum: float | None = option(None, "average the prior's batch statistics with those of earlier iterations "
                                             "(their moving average at this rate, updated every generator step; in "
                                             "the pool methods once per round, as FastDFKD's); 0: this batch's "
                                             f"alone; {_preset_values('bn_momentum')}", group=METHOD)
    one_hot: float | None = option(None, "weight of the one-hot term, the teacher's cross-entropy against its own "
                                         f"argmax or random targets (DAFL, DFQ, DeepInversion, FastDFKD); "
                                         f"{_preset_values('one_hot')}", group=METHOD)
    one_hot_targets: str | None = option(None, "the one-hot term's targets: argmax, the teacher's own prediction; "
                                               "random, classes drawn uniformly for each image of a round (pool "
                                               f"methods only); {_preset_values('one_hot_targets')}", group=METHOD,
                                         choices=ONE_HOT_TARGETS)
    balance: float | None = option(None, "weight of the class-balance term, sum p log p of the batch's mean teacher "
                                         f"prediction (DAFL, DFQ); {_preset_values('balance')}", group=METHOD)
    activation: float | None = option(None, "weight of the activation term, -mean |f| of the input of the teacher's "
                                            f"last linear layer (DAFL); {_preset_values('activation')}",
                                      group=METHOD)
    tv: float | None = option(None, "weight of the total-variation image prior (DeepInversion; the optimised images "
                                    f"only); {_preset_values('tv')}", group=METHOD)
    image_l2: float | None = option(None, "weight of the L2 image prior (DeepInversion; the optimised images only); "
                                          f"{_preset_values('image_l2')}", group=METHOD)
    student_loss: str | None = option(None, "the student's loss: kl-at, KL + beta * attention transfer (ZSKT); kd, "
                                            "T^2 KL at temperature T per sample (the frameworks' KD); l1, |t - s| "
                                            f"(DFAD); {_preset_values('student_loss')}", group=METHOD,
                                      choices=STUDENT_LOSSES)

    def resolved(self, context: Context | None = None) -> ObjectiveSettings:
        objectives = copy_of(self)
        check_choice(objectives.method, tuple(METHODS), "method")
        preset = METHODS[objectives.method]
        for name in GENERATOR_WEIGHTS + ("adversarial_loss", "student_loss", "bn_momentum", "one_hot_targets"):
            if getattr(objectives, name) is None:
                setattr(objectives, name, getattr(preset, name))
        for name in GENERATOR_WEIGHTS:
            check_non_negative(getattr(objectives, name), name)
        check_choice(objectives.adversarial_loss, ADVERSARIAL_LOSSES, "adversarial_loss")
        check_choice(objectives.student_loss, STUDENT_LOSSES, "student_loss")
        check_choice(objectives.one_hot_targets, ONE_HOT_TARGETS, "one_hot_targets")
        check_non_negative(objectives.bn_momentum, "bn_momentum")
        if objectives.bn_momentum >= 1:
            raise ValueError(f"bn_momentum must be in [0, 1), got {objectives.bn_momentum!r}")
        if not any(getattr(objectives, name) for name in GENERATOR_WEIGHTS):
            raise ValueError(f"every weight of the generator's objective is 0 ({', '.join(GENERATOR_WEIGHTS)}): give "
                             f"at least one a weight > 0")
        if preset.shape == "generator":
            for name, default in (("one_hot_targets", "argmax"), ("tv", 0), ("image_l2", 0)):
                if getattr(objectives, name) != default:
                    raise ValueError(f"{name} {getattr(objectives, name)!r} applies to the pool methods "
                                     f"({', '.join(POOL_METHODS)}), not to {objectives.method}")
            for name in ("decision-kl", "competition"):
                if objectives.adversarial_loss == name:
                    raise ValueError(f"adversarial_loss {name} applies to the pool methods ({', '.join(POOL_METHODS)})"
                                     f", not to {objectives.method}")
        elif objectives.student_loss == "kl-at":
            raise ValueError(f"student_loss kl-at (attention transfer) reads the student's feature maps on generated "
                             f"batches; the pool methods ({objectives.method}) train on pool batches by kd or l1")
        return objectives


@dataclass
class LoopSettings:
    """The length and shape of the loop: Algorithm 1's iterations, or the pool methods' rounds."""
    iterations: int | None = option(None, f"iterations N, each n_G generator + n_S student steps (the pool methods: "
                                          f"rounds, each one synthesis of n_G steps + n_S student steps); default: "
                                          f"{per_dataset('iterations')}; fast and deepinversion: 220 and 200 (the "
                                          f"published runs), 30 on digits", group=ALGORITHM)
    n_generator_steps: int | None = option(None, "n_G; fast: the generator copy's steps per round (2, 5 or 10: "
                                                 "Fast-2, -5, -10, each with its published learning rates); "
                                                 "deepinversion: the images' Adam steps per round; default: the "
                                                 f"method's ({_preset_values('n_generator_steps')}; digits: fast 5, "
                                                 "deepinversion 50)", group=ALGORITHM,
                                           aliases=("--generator-steps",))
    n_student_steps: int | None = option(None, f"n_S; default: the method's ({_preset_values('n_student_steps')}; "
                                               "digits: fast and deepinversion 50)", group=ALGORITHM)
    sync_bn: bool = option(True, "under torchrun (data-parallel): batch-norm statistics of the student and the "
                                 "generator over the global batch, so that N processes compute what one does; "
                                 "--no-sync-bn: per-process statistics (a different algorithm)", group=PROCESSES)

    def resolved(self, context: Context) -> LoopSettings:
        loop = copy_of(self)
        method, dataset = context.method, context.defaults.dataset
        if loop.iterations is None:
            loop.iterations = (pool_preset(method, dataset).iterations if METHODS[method].shape == "pool"
                               else context.defaults.iterations)
        for name in ("n_generator_steps", "n_student_steps"):
            if getattr(loop, name) is None:
                setattr(loop, name, method_default(method, name, dataset))
        for name in ("iterations", "n_generator_steps", "n_student_steps"):
            check_count(getattr(loop, name), name)
        if not isinstance(loop.sync_bn, bool):
            raise ValueError(f"sync_bn must be True or False, got {loop.sync_bn!r}")
        return loop


POOL_AUGMENTATIONS = ("auto", "crop+flip", "crop", "shift", "none")
KD_MOMENTUM, KD_MIN_LR = 0.9, 2e-4  # the pool methods' student: SGD momentum, cosine down to this learning rate


@dataclass
class PoolSettings:
    """The rounds of the pool methods (fast, deepinversion): synthesis, pool, and the student's SGD."""
    synthesis_lr: float | None = option(None, "fast: Adam learning rate of the generator copy (default by n_G: "
                                              + ", ".join(f"{g}: {lr}" for g, (lr, _) in FAST_LEARNING_RATES.items())
                                              + "); deepinversion: of the images (default 0.1)", group=POOL)
    z_lr: float | None = option(None, "fast: Adam learning rate of the round's latent codes (default by n_G: "
                                      + ", ".join(f"{g}: {z}" for g, (_, z) in FAST_LEARNING_RATES.items()) + ")",
                                group=POOL)
    kd_lr: float | None = option(None, "the student's SGD learning rate (momentum 0.9, cosine over the rounds after "
                                       "the warm-up down to 2e-4); default: fast 0.2, deepinversion 0.1", group=POOL)
    kd_weight_decay: float | None = option(None, "the student's SGD weight decay; default 1e-4", group=POOL)
    warmup: int | None = option(None, "rounds of synthesis without student steps, the adversarial term joining in "
                                      "the last of them (FastDFKD's warm-up, as its loop counts); default: fast 20 "
                                      "(digits 3), deepinversion 0, at most the rounds less one",
                                group=POOL)
    reset_round: int | None = option(None, "the round (counted from 1) whose synthesis starts by re-initialising "
                                           "the generator's first layer (FastDFKD at 120 + warm-up); 0: never; "
                                           "default: fast 140 (digits 20)", group=POOL)
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
        method = context.method
        if METHODS[method].shape != "pool":
            default = PoolSettings()
            given = [f.name for f in dataclasses.fields(pool) if getattr(pool, f.name) != getattr(default, f.name)]
            if given:
                raise ValueError(f"{', '.join(given)} applies to the pool methods ({', '.join(POOL_METHODS)}), not "
                                 f"to {method}")
            return pool
        preset = pool_preset(method, context.defaults.dataset)
        steps_per_round = loop.n_generator_steps if loop is not None else METHODS[method].n_generator_steps
        if method == "fast" and (pool.synthesis_lr is None or pool.z_lr is None):
            if steps_per_round not in FAST_LEARNING_RATES:
                raise ValueError(f"fast with {steps_per_round} generator steps per round: the published learning "
                                 f"rates are for {', '.join(map(str, FAST_LEARNING_RATES))} steps; give synthesis_lr "
                                 f"and z_lr")
            synthesis_lr, z_lr = FAST_LEARNING_RATES[steps_per_round]
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


def default_sgd_lr(dataset: str, arch: str | None) -> float:
    """0.1, the usual CIFAR recipe; 0.02 for ResNets on digits, whose 330 steps at 0.1 are unstable (measured:
    ResNet-34 reached 75.8% test accuracy at 0.1 and 99.0% at 0.02; WRN-16-2 99.0% at 0.1)."""
    return 0.02 if dataset == "digits" and (arch or "").lower().startswith("resnet") else 0.1


@dataclass
class SGDSettings:
    """Supervised SGD on real images (pretraining, the few-shot baseline)."""
    batch_size: int = option(128, "real images per step", group=ALGORITHM)
    lr: float | None = option(None, "initial learning rate (Nesterov momentum); default 0.1 (0.02 for ResNets on "
                                    "digits)", group=ALGORITHM)
    momentum: float = option(0.9, "Nesterov momentum", group=ALGORITHM)
    weight_decay: float = option(5e-4, "weight decay", group=ALGORITHM)

    def resolved(self, context: Context) -> SGDSettings:
        sgd = copy_of(self)
        sgd.lr = default_sgd_lr(context.defaults.dataset, context.arch) if sgd.lr is None else sgd.lr
        check_count(sgd.batch_size, "batch_size")
        check_positive(sgd.lr, "lr")
        check_non_negative(sgd.momentum, "momentum")
        check_non_negative(sgd.weight_decay, "weight_decay")
        return sgd


@dataclass
class PretrainSettings:
    """Supervised training of one classifier."""
    arch: str = option("wrn-16-2", f"architecture: {ARCHITECTURE_HELP}", group=DATA)
    epochs: int | None = option(None, f"epochs; default {per_dataset('pretrain_epochs')}", group=ALGORITHM)
    schedule: str = option("cosine", "cosine to 0, or x0.2 at 30%, 60% and 80% of training", group=ALGORITHM,
                           choices=SCHEDULES)

    def resolved(self, context: Context) -> PretrainSettings:
        pretrain = copy_of(self)
        pretrain.arch = architecture_key(pretrain.arch)
        pretrain.epochs = context.defaults.pretrain_epochs if pretrain.epochs is None else pretrain.epochs
        check_count(pretrain.epochs, "epochs")
        check_choice(pretrain.schedule, SCHEDULES, "schedule")
        return pretrain


def parse_samples_per_class(value) -> str:
    """'all', or a positive count as a string ('10'); 0 is refused with the program to use instead."""
    text = str(value).strip().lower()
    if text == "all":
        return text
    if not text.isdigit():
        raise ValueError(f"samples_per_class must be a positive integer or 'all', got {value!r}")
    if int(text) == 0:
        raise ValueError("samples_per_class 0 means no real image at all: that is zero-shot knowledge transfer, "
                         "python -m zskt_fast.train")
    return str(int(text))


@dataclass
class KDSettings:
    """The few-shot KD+AT baseline (Zagoruyko & Komodakis, 2017, as the paper uses it)."""
    samples_per_class: str = option("10", "M real images per class, drawn once with the seed (the same for every run "
                                          "of that seed); 'all': the whole training set; 0 is refused (zero-shot is "
                                          "python -m zskt_fast.train)", group=DATA)
    iterations: int | None = option(
        None, "SGD steps, whatever M: by default as many as training on the whole training set takes with the "
              "pretraining recipe (epochs x batches per epoch: digits 330, CIFAR-10 78,200), so that a tiny M does "
              "not mean a tiny training", group=ALGORITHM)
    alpha: float = option(KD_ALPHA, "weight of the distillation term; 1 - alpha weighs the cross-entropy",
                          group=ALGORITHM)
    temperature: float = option(KD_TEMPERATURE, "distillation temperature T (the KL term is scaled by T^2)",
                                   group=ALGORITHM)
    beta: float = option(KD_BETA, "attention-transfer weight of the fused op: the AT paper's 1000 with its "
                                     "factor 1/2", group=ALGORITHM)
    backend: str = option("auto", "loss kernels", group=SPEED, choices=BACKENDS)

    def resolved(self, context: Context) -> KDSettings:
        kd = copy_of(self)
        kd.samples_per_class = parse_samples_per_class(kd.samples_per_class)
        if kd.iterations is None and context.steps_per_epoch is not None:
            kd.iterations = context.defaults.pretrain_epochs * context.steps_per_epoch
        if kd.iterations is not None:
            check_count(kd.iterations, "iterations")
        if not isinstance(kd.alpha, (int, float)) or isinstance(kd.alpha, bool) or not 0 <= kd.alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {kd.alpha!r}")
        check_positive(kd.temperature, "temperature")
        check_non_negative(kd.beta, "beta")
        check_choice(kd.backend, BACKENDS, "backend")
        return kd


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    return math.ceil(train_size / batch_size)


@dataclass
class CurveSettings:
    """Transition curves and the MTE (Algorithm 2); defaults: the paper's."""
    n_images: int | None = option(None, f"N images on which A and B agree, the first ones of the test set; default: "
                                        f"{DEFAULT_IMAGES} (the paper's), {DIGITS_IMAGES} for digits",
                                  group=ALGORITHM_2)
    steps: int = option(DEFAULT_STEPS, "K gradient steps per trajectory", group=ALGORITHM_2)
    step_size: float = option(DEFAULT_STEP_SIZE, "xi: x <- x - xi * grad_x CE(A(x), j)", group=ALGORITHM_2)
    source: str = option("agreed", "source class i of an image: the class A and B both predict (the paper's "
                                   "Algorithm 2), or the data set's label (the authors' code)", group=ALGORITHM_2,
                         choices=SOURCES)
    shuffle_seed: int | None = option(None, "take the first agreeing images in an order drawn with this seed (the "
                                            "authors' code takes a seeded random order) instead of the test set's "
                                            "order", group=ALGORITHM_2)
    memory_budget: float | None = option(None, "memory for one batch of trajectories, in GB; default: half the free "
                                               "GPU memory, 2 GB on the CPU", group=SPEED, metavar="GB")

    def resolved(self, context: Context) -> CurveSettings:
        curves = copy_of(self)
        if curves.n_images is None:
            curves.n_images = DIGITS_IMAGES if context.defaults.dataset == "digits" else DEFAULT_IMAGES
        check_count(curves.n_images, "n_images")
        check_count(curves.steps, "steps")
        check_positive(curves.step_size, "step_size")
        check_choice(curves.source, SOURCES, "source")
        if curves.shuffle_seed is not None:
            check_count(curves.shuffle_seed, "shuffle_seed", minimum=0)
        if curves.memory_budget is not None:
            check_positive(curves.memory_budget, "memory_budget")
        return curves


@dataclass
class ComparisonSettings:
    """The paper's comparison for one pair (zskt_fast.reproduce): which runs, how long."""
    shots: list[int] = option([1, 2, 5, 10, 20], "M images per class of the few-shot KD+AT runs (the paper's CIFAR-10 "
                                                 "runs: 10 25 50 75 100)", group=ALGORITHM)
    fewshot_iterations: int | None = option(None, "KD+AT steps of every run; default: as many as full-data training "
                                                  "(digits 330)", group=ALGORITHM)
    scratch_epochs: int | None = option(None, "epochs of the student trained from scratch; default: pretraining's "
                                              f"({per_dataset('pretrain_epochs')})", group=ALGORITHM)
    mte_images: int | None = option(None, f"N test images of the transition curves; default {DIGITS_IMAGES} on digits, "
                                          f"{DEFAULT_IMAGES:,} (the paper's) otherwise", group=ALGORITHM_2)
    mte_steps: int = option(DEFAULT_STEPS, "K gradient steps per trajectory (the paper's 100)", group=ALGORITHM_2)
    methods: list[str] = option(list(METHODS), "the data-free methods of the methods section (student accuracy "
                                               "against wall-clock seconds), each run with its preset",
                                group=METHOD)
    methods_eval_every: int = option(25, "test the students of the methods section every this many iterations (the "
                                         "points of their accuracy-against-seconds curves)", group=METHOD)

    def resolved(self, context: Context) -> ComparisonSettings:
        comparison = copy_of(self)
        if not comparison.methods or not isinstance(comparison.methods, list):
            raise ValueError(f"methods must be a list of method names, got {comparison.methods!r}")
        for method in comparison.methods:
            check_choice(method, tuple(METHODS), "methods")
        if len(set(comparison.methods)) != len(comparison.methods):
            raise ValueError(f"methods takes distinct names, got {comparison.methods}")
        check_count(comparison.methods_eval_every, "methods_eval_every")
        for name in ("fewshot_iterations", "scratch_epochs", "mte_images"):
            if getattr(comparison, name) is not None:
                check_count(getattr(comparison, name), name)
        check_count(comparison.mte_steps, "mte_steps")
        if not comparison.shots or not isinstance(comparison.shots, list):
            raise ValueError(f"shots must be a list of counts, got {comparison.shots!r}")
        for m in comparison.shots:
            check_count(m, "shots")
        if len(set(comparison.shots)) != len(comparison.shots):
            raise ValueError(f"shots takes distinct values, got {comparison.shots}")
        if comparison.mte_images is None:
            comparison.mte_images = DIGITS_IMAGES if context.defaults.dataset == "digits" else DEFAULT_IMAGES
        return comparison
