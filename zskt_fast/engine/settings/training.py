"""The settings of supervised training: SGD on real images (pretraining, the few-shot baseline), pretraining one
classifier, and the few-shot KD+AT baseline."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...common import check_choice, check_count, check_non_negative, check_positive, option
from ...models import ARCHITECTURE_HELP, architecture_key
from ...ops import BACKENDS, KD_ALPHA, KD_BETA, KD_TEMPERATURE
from .parts import ALGORITHM, DATA, SPEED, Context, copy_of, per_dataset

SCHEDULES = ("cosine", "step")


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


