"""Settings parts: one small dataclass per concern, each field holding its default and its option's help once.

A program's configuration (settings/config.py) is composed of parts; every part resolves the same way,
`part.resolved(context)`: a copy with what was left to the machine or the data set filled in, every value checked.
The `Context` says what those defaults depend on.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from ...common import check_choice, check_count, check_positive, option, resolve_device
from ...data import DATASETS, DEFAULT_DATA_ROOT, dataset_info, normalisation_of
from ...models import ARCHITECTURE_HELP, architecture_key
from ...models.features import parse_pairs
from ..lifecycle.distributed import DIST_BACKENDS

# Help groups of the options.
DATA, ALGORITHM, SPEED, OUTPUTS, PROCESSES = ("data and networks", "Algorithm 1 (defaults: the authors' settings)",
                                              "speed", "outputs", "many processes (torchrun)")
METHOD = "data-free method (weights default to the --method preset's; docs/methods.md)"
POOL = "pool methods (fast, deepinversion): rounds of synthesis into a pool, student steps on pool batches"


@dataclass(frozen=True)
class DatasetDefaults:
    """What a data set decides by default. CIFAR-10 and SVHN follow the authors' runs; digits is the offline default,
    sized to finish on a 2-core CPU within minutes."""
    dataset: str
    teacher: str
    student: str
    iterations: int       # zero-shot iterations
    eval_every: int
    log_every: int
    pretrain_epochs: int


DATASET_DEFAULTS = {d.dataset: d for d in (
    DatasetDefaults("cifar10", "wrn-40-2", "wrn-16-1", iterations=80_000, eval_every=1000, log_every=100,
                    pretrain_epochs=200),
    DatasetDefaults("svhn", "wrn-40-2", "wrn-16-1", iterations=50_000, eval_every=1000, log_every=100,
                    pretrain_epochs=100),
    DatasetDefaults("digits", "wrn-16-2", "wrn-16-1", iterations=800, eval_every=100, log_every=10,
                    pretrain_epochs=30),
    DatasetDefaults("cifar100", "wrn-40-2", "wrn-16-1", iterations=80_000, eval_every=1000, log_every=100,
                    pretrain_epochs=200),
    DatasetDefaults("folder", "wrn-40-2", "wrn-16-1", iterations=80_000, eval_every=1000, log_every=100,
                    pretrain_epochs=100),
)}


def per_dataset(name: str) -> str:
    """'cifar10 X, svhn Y, digits Z, ...' for the DatasetDefaults field `name`, for help texts."""
    return ", ".join(f"{d.dataset} {getattr(d, name):,}" if isinstance(getattr(d, name), int) else
                     f"{d.dataset} {getattr(d, name)}" for d in DATASET_DEFAULTS.values())


@dataclass(frozen=True)
class Context:
    """What defaults depend on besides the settings themselves: the data set's defaults, the device, and, where a
    program knows them, the network trained, the training steps per epoch and the run's length."""
    defaults: DatasetDefaults = DATASET_DEFAULTS["cifar10"]
    device: torch.device = torch.device("cpu")
    arch: str | None = None
    steps_per_epoch: int | None = None
    iterations: int | None = None
    method: str = "zskt"  # the data-free method, whose preset fills the loop's n_S


def copy_of(part):
    return dataclasses.replace(part)


@dataclass
class DataSettings:
    """The data set: it tests the student (pretraining and the few-shot baseline also learn from it)."""
    dataset: str = option("digits", "data set: its test set scores the trained network (pretrain and fewshot also "
                                    "learn from its training set); digits ships with scikit-learn and works offline",
                          group=DATA, choices=DATASETS)
    data_root: str = option(DEFAULT_DATA_ROOT, "folder holding CIFAR-10 / CIFAR-100 / SVHN, or the image folder "
                                               "(class subfolders, or train/ and test/ or val/ holding them)",
                            group=DATA)
    download: bool = option(False, "download CIFAR-10 / CIFAR-100 / SVHN into --data-root", group=DATA)
    image_size: int | None = option(None, "side of the square images: the data set's images are resized to it, a "
                                          "generator makes images of that size; default: the data set's (32; 8 for "
                                          "digits, which cannot change)", group=DATA)
    channels: int | None = option(None, "image channels of an image folder: 3 (RGB) or 1 (grey); default 3",
                                  group=DATA)
    mean: list[float] | None = option(None, "per-channel mean the images are normalised with; default: the one the "
                                            "teacher file records, else the data set's (for CIFAR-10 and SVHN the "
                                            "authors' constants)", group=DATA)
    std: list[float] | None = option(None, "per-channel std, with --mean; default as --mean", group=DATA)

    def resolved(self, context: Context) -> DataSettings:
        data = copy_of(self)
        check_choice(data.dataset, DATASETS, "dataset")
        for name in ("image_size", "channels"):
            if getattr(data, name) is not None:
                check_count(getattr(data, name), name)
        data.data_root = os.path.abspath(os.path.expanduser(data.data_root))  # stored resolved: resume from anywhere
        info = dataset_info(data.dataset, root=data.data_root if data.dataset == "folder" else None,
                            image_size=data.image_size, channels=data.channels)
        data.image_size, data.channels = info.image_size, info.channels
        if data.mean is not None or data.std is not None:
            mean, std = normalisation_of(data.dataset, data.mean, data.std, channels=data.channels)
            data.mean, data.std = list(mean), list(std)
        return data

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size


@dataclass
class NetworkSettings:
    """The teacher and the student, by name, and how their feature maps pair."""
    teacher: str | None = option(None, f"teacher architecture: {ARCHITECTURE_HELP}; default per dataset: "
                                       f"{per_dataset('teacher')}", group=DATA)
    student: str | None = option(None, f"student architecture; default: {per_dataset('student')}", group=DATA)
    teacher_ckpt: str | None = option(
        None, "teacher weights: the authors' last.pth.tar, a file from zskt_fast.pretrain or a plain state dict; "
              "default: the cached pretrained teacher ($ZSKT_FAST_CACHE or ~/.cache/zskt_fast/teachers/"
              "DATASET-ARCH.pt), trained on first use for digits", group=DATA)
    num_classes: int | None = option(None, "number of classes of teacher and student; default: the data set's "
                                           "(a different value is refused)", group=DATA)
    attention_layers: list[str] | None = option(
        None, "attention-transfer pairs TEACHER_NODE:STUDENT_NODE (module or torch.fx node names, see --list-nodes); "
              "default: this package's networks pair their own features, any other pair of networks the last block "
              "of each spatial size both produce", group=DATA, metavar="T:S")

    def resolved(self, context: Context) -> NetworkSettings:
        networks = copy_of(self)
        networks.teacher = architecture_key(networks.teacher or context.defaults.teacher)
        networks.student = architecture_key(networks.student or context.defaults.student)
        if networks.teacher_ckpt:
            networks.teacher_ckpt = os.path.abspath(os.path.expanduser(networks.teacher_ckpt))
        if networks.num_classes is not None:
            check_count(networks.num_classes, "num_classes")
        if networks.attention_layers is not None:
            parse_pairs(networks.attention_layers)
        return networks

@dataclass
class RunSettings:
    """Where a run computes and from which seed."""
    seed: int = option(0, "seed of the networks' initialisation and of every random draw", group=ALGORITHM)
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (CUDA when present)", group=SPEED)

    def resolved(self, context: Context) -> RunSettings:
        check_count(self.seed, "seed", minimum=0)
        return RunSettings(self.seed, str(resolve_device(self.device)))


@dataclass
class OutputSettings:
    """What a run writes, and how often."""
    eval_every: int | None = option(None, f"test the student (and save an image grid) every this many iterations; "
                                          f"default: {per_dataset('eval_every')}; few-shot: a tenth of the steps",
                                    group=OUTPUTS)
    log_every: int | None = option(None, f"metrics-log interval; default: {per_dataset('log_every')}; few-shot: "
                                         f"eval_every", group=OUTPUTS)
    checkpoint_minutes: float = option(5.0, "write a checkpoint at least this often (a killed run loses at most "
                                            "this much)", group=OUTPUTS)
    checkpoint_every: int = option(0, "also checkpoint every this many iterations (0: by time only)", group=OUTPUTS)
    tensorboard: bool = option(True, "TensorBoard events, when the tensorboard package is installed", group=OUTPUTS)

    def resolved(self, context: Context) -> OutputSettings:
        outputs = copy_of(self)
        if outputs.eval_every is None and context.iterations is not None:  # else known once the length is
            outputs.eval_every = min(context.defaults.eval_every, context.iterations)
        outputs.log_every = context.defaults.log_every if outputs.log_every is None else outputs.log_every
        for name in ("eval_every", "log_every"):
            if getattr(outputs, name) is not None:
                check_count(getattr(outputs, name), name)
        check_count(outputs.checkpoint_every, "checkpoint_every", minimum=0)
        check_positive(outputs.checkpoint_minutes, "checkpoint_minutes")
        return outputs


@dataclass
class ProcessSettings:
    """The process group under torchrun."""
    dist_backend: str = option("auto", "torch.distributed backend under torchrun: nccl for CUDA devices, gloo for "
                                       "the CPU (auto picks)", group=PROCESSES, choices=DIST_BACKENDS)
    dist_timeout_minutes: float = option(30.0, "under torchrun: a collective that waits this long (a process died "
                                               "or hangs) ends the job with an error", group=PROCESSES)

    def resolved(self, context: Context) -> ProcessSettings:
        check_choice(self.dist_backend, DIST_BACKENDS, "dist_backend")
        check_positive(self.dist_timeout_minutes, "dist_timeout_minutes")
        return copy_of(self)
