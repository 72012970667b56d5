"""The settings of a zero-shot run: the steps (Algorithm 1's hyper-parameters and how they run), the objectives (a
method's preset, each value of which can be overridden) and the loop's length; the rounds of the methods that
synthesise into a pool are in rounds.py. Every preset value comes from the method's registry entry
(methods/registry.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...common import check_choice, check_count, check_non_negative, check_positive, option
from ...ops import BACKENDS, DEFAULT_BETA
from ..lifecycle.speed import (AMP_CHOICES, COMPILE_CHOICES, COMPILE_FROM_ITERATIONS, COMPILE_MODES_WITH_GRAPHS,
                               check_cuda_graphs, default_amp, default_compile)
from ..methods.registry import METHODS, digits_values, methods_with_rounds, preset_values, rounds_values
from .parts import ALGORITHM, METHOD, PROCESSES, SPEED, Context, copy_of, per_dataset

ADVERSARIAL_LOSSES = ("kl", "kl-batch", "l1", "decision-kl", "competition")
STUDENT_LOSSES = ("kl-at", "kd", "l1")
ONE_HOT_TARGETS = ("argmax", "random")
GENERATOR_WEIGHTS = ("adversarial", "bn_prior", "one_hot", "balance", "activation", "tv", "image_l2")


def compile_context(context: Context, loop) -> Context:
    """The steps' context: what 'compile auto' weighs is the number of compiled steps, the iterations of Algorithm 1
    or the student steps of the pool methods (their synthesis runs eagerly): the method's strategy says which."""
    return dataclasses.replace(context, iterations=METHODS[context.method].strategy.compiled_steps(loop))


@dataclass
class StepSettings:
    """One iteration's steps of Algorithm 1: the paper's hyper-parameters, and how the steps run."""
    batch_size: int | None = option(None, "generated images per iteration (per round of the pool methods); default: "
                                          f"the method's ({preset_values('batch_size')})", group=ALGORITHM)
    z_dim: int | None = option(None, f"noise dimension; default: the method's ({preset_values('z_dim')})",
                               group=ALGORITHM)
    generator_lr: float = option(1e-3, "Adam learning rate of the generator, cosine-annealed to 0", group=ALGORITHM)
    student_lr: float = option(2e-3, "Adam learning rate of the student, cosine-annealed to 0 (the pool methods' "
                                     "student takes SGD at --kd-lr instead)", group=ALGORITHM)
    beta: float = option(DEFAULT_BETA, "attention-transfer weight; 0 disables it", group=ALGORITHM)
    temperature: float | None = option(None, "KL temperature of the student's loss; default: the method's "
                                             f"({preset_values('temperature')})", group=ALGORITHM)
    grad_clip: float = option(5.0, "gradient-norm clip of both networks", group=ALGORITHM)
    student_ema: float = option(0.0, "average the student's weights: an exponential moving average at this decay "
                                     "(e.g. 0.999), updated after every student step, with a warm-up of the decay "
                                     "over the first steps; the average is the student the run tests, reports and "
                                     "saves (student.pt). 0: off, the student as trained", group=ALGORITHM)
    generator_ema: float = option(0.0, "MAD's momentum generator (Do et al. 2022): a moving average of the generator "
                                       "at this momentum (e.g. 0.95), updated after every generator step, whose "
                                       "images of each iteration's noise the student learns from beside the "
                                       "generator's (the student's batch doubles); Algorithm 1's methods. 0: off",
                                  group=ALGORITHM)
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
            if getattr(steps, name) is None:  # a data set's rounds may have their own batch
                setattr(steps, name, preset.default(name, context.defaults.dataset))
        for name in ("batch_size", "z_dim"):
            check_count(getattr(steps, name), name)
        for name in ("generator_lr", "student_lr", "temperature", "grad_clip"):
            check_positive(getattr(steps, name), name)
        check_non_negative(steps.beta, "beta")
        for name in ("student_ema", "generator_ema"):
            check_non_negative(getattr(steps, name), name)
            if getattr(steps, name) >= 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(steps, name)!r}")
        if steps.generator_ema and not preset.strategy.momentum_generator:
            able = ", ".join(name for name, m in METHODS.items() if m.strategy.momentum_generator)
            raise ValueError(f"generator_ema (MAD's momentum generator) applies to the methods that train a generator "
                             f"inside Algorithm 1 ({able}), not to {context.method}")
        check_choice(steps.amp, AMP_CHOICES, "amp")
        check_choice(steps.backend, BACKENDS, "backend")
        check_choice(steps.compile, COMPILE_CHOICES, "compile")
        device = context.device
        on_gpu = device.type == "cuda"
        if steps.amp == "auto":
            steps.amp = default_amp(device)
        graphs_possible = preset.strategy.captures_cuda_graphs
        if steps.compile == "auto":  # context.iterations: the pool methods' student steps (compile_context)
            steps.compile = default_compile(device, context.iterations)
        if steps.channels_last is None:
            steps.channels_last = on_gpu or steps.amp == "bf16"  # oneDNN's bf16 convolutions want NHWC
        if steps.cuda_graphs is None:
            steps.cuda_graphs = (on_gpu and graphs_possible and steps.amp != "fp16"
                                 and steps.compile not in COMPILE_MODES_WITH_GRAPHS)
        if steps.cuda_graphs and not graphs_possible:
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
                         f". {', '.join(n for n, m in METHODS.items() if not m.rounds)} run Algorithm 1's loop (n_G "
                         "generator steps, then n_S student steps on the same images) with this package's optimisers "
                         f"and schedule; {', '.join(methods_with_rounds())} run rounds of synthesis into a pool, each "
                         "followed by n_S student steps on pool batches, with their published settings. A method "
                         "sets the terms below, n_G and n_S",
                         group=METHOD, choices=tuple(METHODS))
    adversarial: float | None = option(None, "weight of the adversarial term (the generator seeks disagreement); "
                                             f"{preset_values('adversarial')}", group=METHOD)
    adversarial_loss: str | None = option(None, "the adversarial term: kl, -KL(T || S) over samples and classes "
                                                "(ZSKT); kl-batch, -KL(T || S) per sample (DFQ's code); l1, -|t - s| "
                                                "(DFAD); decision-kl, -KL per sample on the samples where S and T "
                                                "agree (FastDFKD); competition, -JS(T, S) at T = 3 (DeepInversion); "
                                                f"{preset_values('adversarial_loss')}", group=METHOD,
                                          choices=ADVERSARIAL_LOSSES)
    bn_prior: float | None = option(None, "weight of the batch-norm statistics prior (DeepInversion, DFQ): the "
                                          "distance of the batch statistics at the teacher's BatchNorm layers from "
                                          f"their running statistics; {preset_values('bn_prior')}", group=METHOD)
    bn_momentum: float | None = option(None, "average the prior's batch statistics with those of earlier iterations "
                                             "(their moving average at this rate, updated every generator step; in "
                                             "the pool methods once per round, as FastDFKD's); 0: this batch's "
                                             f"alone; {preset_values('bn_momentum')}", group=METHOD)
    one_hot: float | None = option(None, "weight of the one-hot term, the teacher's cross-entropy against its own "
                                         f"argmax or random targets (DAFL, DFQ, DeepInversion, FastDFKD); "
                                         f"{preset_values('one_hot')}", group=METHOD)
    one_hot_targets: str | None = option(None, "the one-hot term's targets: argmax, the teacher's own prediction; "
                                               "random, classes drawn uniformly for each image of a round (pool "
                                               f"methods only); {preset_values('one_hot_targets')}", group=METHOD,
                                         choices=ONE_HOT_TARGETS)
    balance: float | None = option(None, "weight of the class-balance term, sum p log p of the batch's mean teacher "
                                         f"prediction (DAFL, DFQ); {preset_values('balance')}", group=METHOD)
    activation: float | None = option(None, "weight of the activation term, -mean |f| of the input of the teacher's "
                                            f"last linear layer (DAFL); {preset_values('activation')}",
                                      group=METHOD)
    tv: float | None = option(None, "weight of the total-variation image prior (DeepInversion; the optimised images "
                                    f"only); {preset_values('tv')}", group=METHOD)
    image_l2: float | None = option(None, "weight of the L2 image prior (DeepInversion; the optimised images only); "
                                          f"{preset_values('image_l2')}", group=METHOD)
    student_loss: str | None = option(None, "the student's loss: kl-at, KL + beta * attention transfer (ZSKT); kd, "
                                            "T^2 KL at temperature T per sample (the frameworks' KD); l1, |t - s| "
                                            f"(DFAD); {preset_values('student_loss')}", group=METHOD,
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
        strategy, pool_methods = preset.strategy, ", ".join(methods_with_rounds())
        if not strategy.round_terms:
            for name, default in (("one_hot_targets", "argmax"), ("tv", 0), ("image_l2", 0)):
                if getattr(objectives, name) != default:
                    raise ValueError(f"{name} {getattr(objectives, name)!r} applies to the pool methods "
                                     f"({pool_methods}), not to {objectives.method}")
            for name in ("decision-kl", "competition"):
                if objectives.adversarial_loss == name:
                    raise ValueError(f"adversarial_loss {name} applies to the pool methods ({pool_methods}), not to "
                                     f"{objectives.method}")
        if not strategy.student_reads_features and objectives.student_loss == "kl-at":
            raise ValueError(f"student_loss kl-at (attention transfer) reads the student's feature maps on generated "
                             f"batches; the pool methods ({objectives.method}) train on pool batches by kd or l1")
        return objectives


@dataclass
class LoopSettings:
    """The length and shape of the loop: Algorithm 1's iterations, or the pool methods' rounds."""
    iterations: int | None = option(None, f"iterations N, each n_G generator + n_S student steps (the pool methods: "
                                          f"rounds, each one synthesis of n_G steps + n_S student steps); default: "
                                          f"{per_dataset('iterations')}; the pool methods' published runs: "
                                          f"{rounds_values('iterations')}; on digits: {digits_values('iterations')}",
                                    group=ALGORITHM)
    n_generator_steps: int | None = option(None, "n_G; fast: the generator copy's steps per round (2, 5 or 10: "
                                                 "Fast-2, -5, -10, each with its published learning rates); "
                                                 "deepinversion: the images' Adam steps per round; default: the "
                                                 f"method's ({preset_values('n_generator_steps')}; digits: "
                                                 f"{digits_values('n_generator_steps')})", group=ALGORITHM,
                                           aliases=("--generator-steps",))
    n_student_steps: int | None = option(None, f"n_S; default: the method's ({preset_values('n_student_steps')}; "
                                               f"digits: {digits_values('n_student_steps')})", group=ALGORITHM)
    sync_bn: bool = option(True, "under torchrun (data-parallel): batch-norm statistics of the student and the "
                                 "generator over the global batch, so that N processes compute what one does; "
                                 "--no-sync-bn: per-process statistics (a different algorithm)", group=PROCESSES)

    def resolved(self, context: Context) -> LoopSettings:
        loop = copy_of(self)
        method, dataset = context.method, context.defaults.dataset
        rounds = METHODS[method].rounds_on(dataset)
        if loop.iterations is None:
            loop.iterations = rounds.iterations if rounds is not None else context.defaults.iterations
        for name in ("n_generator_steps", "n_student_steps"):
            if getattr(loop, name) is None:
                setattr(loop, name, METHODS[method].default(name, dataset))
        for name in ("iterations", "n_generator_steps", "n_student_steps"):
            check_count(getattr(loop, name), name)
        if not isinstance(loop.sync_bn, bool):
            raise ValueError(f"sync_bn must be True or False, got {loop.sync_bn!r}")
        return loop
