"""Settings: one dataclass per concept, holding every default and the help text of its command-line option.

DataSettings   the data set and its image shape (every program); TeacherStudentSettings adds the two networks
StepSettings   one iteration's steps of Algorithm 1 (the paper's hyper-parameters and how the steps run)
LoopSettings   a zero-shot run of given networks (zskt_fast.distill): StepSettings plus the loop length, seed, device,
               speed switches and outputs
TrainConfig    a zero-shot run from the command line: LoopSettings plus TeacherStudentSettings
PretrainConfig supervised pretraining of a teacher (DataSettings plus the recipe)
FewShotConfig  the few-shot KD+AT baseline (TeacherStudentSettings plus its recipe)

The command-line programs build their options from these fields (`zskt_fast._cli`); `resolved()` fills in what
depends on the data set or the machine and checks every value, before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

from ..common import (check_choice, check_count, check_non_negative, check_positive, option, resolve_device,
                      settings_from_dict)
from ..data import DATASETS, DEFAULT_DATA_ROOT, DatasetInfo, dataset_info, normalisation_of
from ..models import ARCHITECTURE_HELP, architecture_key
from ..models.features import parse_pairs
from .distributed import DIST_BACKENDS
from ..ops import BACKENDS, DEFAULT_BETA, DEFAULT_TEMPERATURE, KD_ALPHA, KD_BETA, KD_TEMPERATURE

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
# torch.compile modes; those that capture CUDA graphs of their own cannot run inside ours.
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
COMPILE_CHOICES = ("auto",) + COMPILE_MODES
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Per data set: (teacher, student, iterations, evaluate every, log every). CIFAR-10 and SVHN follow the authors' runs;
# digits is the offline default, sized to finish on a 2-core CPU within minutes.
DATASET_DEFAULTS = {
    "cifar10": ("wrn-40-2", "wrn-16-1", 80_000, 1000, 100),
    "svhn": ("wrn-40-2", "wrn-16-1", 50_000, 1000, 100),
    "digits": ("wrn-16-2", "wrn-16-1", 800, 100, 10),
    "cifar100": ("wrn-40-2", "wrn-16-1", 80_000, 1000, 100),
    "folder": ("wrn-40-2", "wrn-16-1", 80_000, 1000, 100),
}
DATA_ROOT_HELP = ("folder holding CIFAR-10 / CIFAR-100 / SVHN, or the image folder (class subfolders, or train/ and "
                  "test/ or val/ holding them)")
DOWNLOAD_HELP = "download CIFAR-10 / CIFAR-100 / SVHN into --data-root"
IMAGE_SIZE_HELP = ("side of the square images: the data set's images are resized to it, a generator makes images of "
                   "that size; default: the data set's (32; 8 for digits, which cannot change)")
CHANNELS_HELP = "image channels of an image folder: 3 (RGB) or 1 (grey); default 3"
PRETRAIN_EPOCHS = {"digits": 30, "cifar10": 200, "svhn": 100, "cifar100": 200, "folder": 100}

DATA, ALGORITHM, SPEED, OUTPUTS, PROCESSES = ("data and networks", "Algorithm 1 (defaults: the authors' settings)",
                                              "speed", "outputs", "many processes (torchrun)")


def per_dataset(index: int) -> str:
    """'cifar10 X, svhn Y, digits Z' for column `index` of DATASET_DEFAULTS, for help texts."""
    return ", ".join(f"{name} {values[index]:,}" if isinstance(values[index], int) else f"{name} {values[index]}"
                     for name, values in DATASET_DEFAULTS.items())


def check_cuda_graphs(amp: str, device: torch.device, compile: str = "off") -> None:
    """CUDA graphs replay captured GPU work: they need a CUDA device and a step without host decisions."""
    if compile in COMPILE_MODES_WITH_GRAPHS:
        raise ValueError(f"compile mode {compile} captures CUDA graphs of its own, which cannot run inside this "
                         "trainer's: use compile max-autotune-no-cudagraphs (--compile max-autotune-no-cudagraphs) "
                         "with them, or set cuda_graphs off (--no-cuda-graphs)")
    if device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device: set cuda_graphs off (--no-cuda-graphs) on the CPU")
    if amp == "fp16":
        raise ValueError("CUDA graphs cannot replay fp16 training (its loss scaler checks for overflow on the host "
                         "after each step): use amp bf16 (--amp bf16), or set cuda_graphs off (--no-cuda-graphs)")


@dataclass
class DataSettings:
    """The data set and its image shape, for every program."""
    dataset: str = option("digits", "data set: its test set scores the trained network (pretrain and fewshot also "
                                    "learn from its training set); digits ships with scikit-learn and works offline",
                          group=DATA, choices=DATASETS)
    data_root: str = option(DEFAULT_DATA_ROOT, DATA_ROOT_HELP, group=DATA)
    download: bool = option(False, DOWNLOAD_HELP, group=DATA)
    image_size: int | None = option(None, IMAGE_SIZE_HELP, group=DATA)
    channels: int | None = option(None, CHANNELS_HELP, group=DATA)

    def _resolve_data(self) -> DatasetInfo:
        """Checks the data fields and fills in the data set's image size and channels, in place (on a copy the caller
        made); returns the data set's description."""
        check_choice(self.dataset, DATASETS, "dataset")
        for name in ("image_size", "channels"):
            if getattr(self, name) is not None:
                check_count(getattr(self, name), name)
        self.data_root = os.path.abspath(os.path.expanduser(self.data_root))  # stored resolved: resume from anywhere
        info = dataset_info(self.dataset, root=self.data_root if self.dataset == "folder" else None,
                            image_size=self.image_size, channels=self.channels)
        self.image_size, self.channels = info.image_size, info.channels
        return info


@dataclass
class TeacherStudentSettings(DataSettings):
    """The data set and the two networks by name, for the programs that distil (train, fewshot)."""
    teacher: str | None = option(None, f"teacher architecture: {ARCHITECTURE_HELP}; default per dataset: "
                                       f"{per_dataset(0)}", group=DATA)
    student: str | None = option(None, f"student architecture; default: {per_dataset(1)}", group=DATA)
    teacher_ckpt: str | None = option(
        None, "teacher weights: the authors' last.pth.tar, a file from zskt_fast.pretrain or a plain state dict; "
              "default: the cached pretrained teacher ($ZSKT_FAST_CACHE or ~/.cache/zskt_fast/teachers/"
              "DATASET-ARCH.pt), trained on first use for digits", group=DATA)

    def _resolve_networks(self) -> None:
        """Fills in the data set's default networks and the teacher file's absolute path, in place."""
        teacher, student = DATASET_DEFAULTS[self.dataset][:2]
        self.teacher = architecture_key(self.teacher or teacher)
        self.student = architecture_key(self.student or student)
        if self.teacher_ckpt:
            self.teacher_ckpt = os.path.abspath(os.path.expanduser(self.teacher_ckpt))


@dataclass
class StepSettings:
    batch_size: int = option(128, "generated images per iteration", group=ALGORITHM)
    z_dim: int = option(100, "noise dimension", group=ALGORITHM)
    generator_lr: float = option(1e-3, "Adam learning rate of the generator, cosine-annealed to 0", group=ALGORITHM)
    student_lr: float = option(2e-3, "Adam learning rate of the student, cosine-annealed to 0", group=ALGORITHM)
    beta: float = option(DEFAULT_BETA, "attention-transfer weight; 0 disables it", group=ALGORITHM)
    temperature: float = option(DEFAULT_TEMPERATURE, "KL temperature", group=ALGORITHM)
    grad_clip: float = option(5.0, "gradient-norm clip of both networks", group=ALGORITHM)
    backend: str = option("auto", "loss kernels: eager PyTorch, C++ cpu, cuda, triton, or auto (fastest for the "
                                  "device)", group=SPEED, choices=BACKENDS)
    compile: str = option("off", "torch.compile the three steps (networks, fused losses, clipping and Adam) with "
                                 "this mode; off: eager steps", group=SPEED, choices=COMPILE_MODES)
    # Steps built directly run as written; the trainer's defaults (TrainConfig) pick these for the device.
    amp: str = "off"
    channels_last: bool | None = False

    def resolved(self, device: torch.device | str):
        """A copy with amp 'auto' and channels_last None filled in for `device`; raises ValueError on a bad value."""
        settings = dataclasses.replace(self)
        settings._resolve_steps(torch.device(device))
        return settings

    def _resolve_steps(self, device: torch.device) -> None:
        for name in ("batch_size", "z_dim"):
            check_count(getattr(self, name), name)
        for name in ("generator_lr", "student_lr", "temperature", "grad_clip"):
            check_positive(getattr(self, name), name)
        check_non_negative(self.beta, "beta")
        check_choice(self.amp, AMP_CHOICES, "amp")
        check_choice(self.backend, BACKENDS, "backend")
        check_choice(self.compile, COMPILE_CHOICES, "compile")
        on_gpu = device.type == "cuda"
        if self.amp == "auto":
            self.amp = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "off"
        if self.compile == "auto":
            # What measured fastest where it was measured: compiled steps on the CPU; on a GPU, where they have not
            # been measured yet, eager steps in CUDA graphs.
            self.compile = "off" if on_gpu else "default"
        if self.channels_last is None:
            self.channels_last = on_gpu

    def step_settings(self) -> StepSettings:
        """The StepSettings part of this object (of a TrainConfig, say), as a StepSettings."""
        return StepSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(StepSettings)})


@dataclass
class LoopSettings(StepSettings):
    iterations: int | None = option(None, f"iterations N, each n_G generator + n_S student steps; default: "
                                          f"{per_dataset(2)}", group=ALGORITHM)
    n_generator_steps: int = option(1, "n_G", group=ALGORITHM)
    n_student_steps: int = option(10, "n_S", group=ALGORITHM)
    seed: int = option(0, "seed of the networks' initialisation and of the noise", group=ALGORITHM)
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (CUDA when present)", group=SPEED)
    amp: str = option("auto", "mixed precision; auto: bf16 on GPUs that support it, off on the CPU",
                      group=SPEED, choices=AMP_CHOICES)
    channels_last: bool | None = option(None, "channels_last memory format; default: on for CUDA", group=SPEED)
    compile: str = option("auto", "torch.compile the three steps (networks, fused losses, clipping and Adam) with "
                                  "this mode, or off; auto: default on the CPU (measured faster there, after a "
                                  "compilation of about a minute), off on CUDA (not measured yet)", group=SPEED,
                          choices=COMPILE_CHOICES)
    cuda_graphs: bool | None = option(None, "capture the generator and student steps as CUDA graphs; default: on "
                                            "for CUDA (off with fp16 and with compile modes that capture their own)",
                                      group=SPEED)
    eval_every: int | None = option(None, f"test the student and save an image grid every this many iterations; "
                                          f"default: {per_dataset(3)}", group=OUTPUTS)
    log_every: int | None = option(None, f"metrics-log interval; default: {per_dataset(4)}", group=OUTPUTS)
    checkpoint_minutes: float = option(5.0, "write a checkpoint at least this often (a killed run loses at most "
                                            "this much)", group=OUTPUTS)
    checkpoint_every: int = option(0, "also checkpoint every this many iterations (0: by time only)",
                                   group=OUTPUTS)
    tensorboard: bool = option(True, "TensorBoard events, when the tensorboard package is installed",
                               group=OUTPUTS)
    sync_bn: bool = option(True, "under torchrun (data-parallel): batch-norm statistics of the student and the "
                                 "generator over the global batch, so that N processes compute what one does; "
                                 "--no-sync-bn: per-process statistics (a different algorithm)", group=PROCESSES)

    def resolved(self) -> LoopSettings:
        """A copy with every None/auto filled in (loop lengths: the paper's CIFAR-10 run) for this machine; raises
        ValueError on bad values."""
        settings = dataclasses.replace(self)
        settings._resolve_loop(*DATASET_DEFAULTS["cifar10"][2:])
        return settings

    def _resolve_loop(self, iterations: int, eval_every: int, log_every: int) -> None:
        self.iterations = iterations if self.iterations is None else self.iterations
        check_count(self.iterations, "iterations")
        self.eval_every = min(eval_every, self.iterations) if self.eval_every is None else self.eval_every
        self.log_every = log_every if self.log_every is None else self.log_every
        for name in ("n_generator_steps", "n_student_steps", "eval_every", "log_every"):
            check_count(getattr(self, name), name)
        check_count(self.seed, "seed", minimum=0)
        check_count(self.checkpoint_every, "checkpoint_every", minimum=0)
        check_positive(self.checkpoint_minutes, "checkpoint_minutes")
        if not isinstance(self.sync_bn, bool):
            raise ValueError(f"sync_bn must be True or False, got {self.sync_bn!r}")
        device = resolve_device(self.device)
        self.device = str(device)
        self._resolve_steps(device)
        if self.cuda_graphs is None:
            self.cuda_graphs = (device.type == "cuda" and self.amp != "fp16"
                                and self.compile not in COMPILE_MODES_WITH_GRAPHS)
        if self.cuda_graphs:
            check_cuda_graphs(self.amp, device, self.compile)

    def loop_settings(self) -> dict:
        """The LoopSettings fields of this object (of a TrainConfig, say), as keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(LoopSettings)}


@dataclass
class TrainConfig(LoopSettings, TeacherStudentSettings):
    num_classes: int | None = option(None, "number of classes of teacher and student; default: the data set's "
                                           "(a different value is refused)", group=DATA)
    dist_backend: str = option("auto", "torch.distributed backend under torchrun: nccl for CUDA devices, gloo for "
                                       "the CPU (auto picks)", group=PROCESSES, choices=DIST_BACKENDS)
    dist_timeout_minutes: float = option(30.0, "under torchrun: a collective that waits this long (a process died "
                                               "or hangs) ends the job with an error", group=PROCESSES)
    attention_layers: list[str] | None = option(
        None, "attention-transfer pairs TEACHER_NODE:STUDENT_NODE (module or torch.fx node names, see --list-nodes); "
              "default: this package's networks pair their own features, any other pair of networks the last block "
              "of each spatial size both produce", group=DATA, metavar="T:S")
    mean: list[float] | None = option(
        None, "per-channel mean the images are normalised with; default: the one the teacher file records, else the "
              "data set's (for CIFAR-10 and SVHN the authors' constants)", group=DATA)
    std: list[float] | None = option(None, "per-channel std, with --mean; default as --mean", group=DATA)

    def resolved(self) -> TrainConfig:
        """A copy with every None/auto filled in for this data set and machine; raises ValueError on bad values."""
        c = dataclasses.replace(self)
        if c.num_classes is not None:
            check_count(c.num_classes, "num_classes")
        info = c._resolve_data()
        c._resolve_networks()
        if c.num_classes is not None and c.num_classes != info.num_classes:
            raise ValueError(f"num_classes is {c.num_classes}, and the {c.dataset} data set has {info.num_classes} "
                             f"classes")
        c.num_classes = info.num_classes
        if c.mean is not None or c.std is not None:
            mean, std = normalisation_of(c.dataset, c.mean, c.std, channels=c.channels)
            c.mean, c.std = list(mean), list(std)
        if c.attention_layers is not None:
            parse_pairs(c.attention_layers)
        c._resolve_loop(*DATASET_DEFAULTS[c.dataset][2:])
        check_choice(c.dist_backend, DIST_BACKENDS, "dist_backend")
        check_positive(c.dist_timeout_minutes, "dist_timeout_minutes")
        return c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "settings") -> TrainConfig:
        """The config saved by `to_dict` (a run's config.json); raises ValueError naming `source` and the field when a
        value has the wrong type."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
        # A run recorded before the compile setting existed ran eager steps; it resumes with them.
        return settings_from_dict(cls, {"compile": "off", **values}, source)


def default_pretrain_lr(dataset: str, arch: str) -> float:
    """0.1, the usual CIFAR recipe; 0.02 for ResNets on digits, whose 330 steps at 0.1 are unstable (measured:
    ResNet-34 reached 75.8% test accuracy at 0.1 and 99.0% at 0.02; WRN-16-2 99.0% at 0.1)."""
    return 0.02 if dataset == "digits" and arch.lower().startswith("resnet") else 0.1


@dataclass
class PretrainConfig(DataSettings):
    arch: str = option("wrn-16-2", f"architecture: {ARCHITECTURE_HELP}", group=DATA)
    epochs: int | None = option(None, "epochs; default " + ", ".join(f"{k} {v}" for k, v in PRETRAIN_EPOCHS.items()))
    lr: float | None = option(None, "initial learning rate; default 0.1 (0.02 for ResNets on digits)")
    batch_size: int = option(128, "batch size")
    momentum: float = option(0.9, "Nesterov momentum")
    weight_decay: float = option(5e-4, "weight decay")
    schedule: str = option("cosine", "cosine to 0, or x0.2 at 30%, 60% and 80% of training",
                           choices=("cosine", "step"))
    seed: int = option(0, "random seed")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")

    def resolved(self) -> PretrainConfig:
        """A copy with epochs, lr and device filled in; raises ValueError on bad values."""
        c = dataclasses.replace(self)
        c._resolve_data()
        c.arch = architecture_key(c.arch)
        c.epochs = PRETRAIN_EPOCHS[c.dataset] if c.epochs is None else c.epochs
        c.lr = default_pretrain_lr(c.dataset, c.arch) if c.lr is None else c.lr
        check_count(c.epochs, "epochs")
        check_count(c.batch_size, "batch_size")
        check_positive(c.lr, "lr")
        check_non_negative(c.momentum, "momentum")
        check_non_negative(c.weight_decay, "weight_decay")
        check_choice(c.schedule, ("cosine", "step"), "schedule")
        c.device = str(resolve_device(c.device))
        return c


@dataclass
class FewShotConfig(TeacherStudentSettings):
    """The few-shot KD+AT baseline (Zagoruyko & Komodakis, 2017, as the paper uses it): the student learns from the
    teacher on M real images per class."""
    samples_per_class: str = option("10", "M real images per class, drawn once with the seed (the same for every run "
                                          "of that seed); 'all': the whole training set; 0 is refused (zero-shot is "
                                          "python -m zskt_fast.train)", group=DATA)
    iterations: int | None = option(
        None, "SGD steps, whatever M: by default as many as training on the whole training set takes with the "
              "pretraining recipe (epochs x batches per epoch: digits 330, CIFAR-10 78,200), so that a tiny M does "
              "not mean a tiny training", group=ALGORITHM)
    batch_size: int = option(128, "images per step, drawn with replacement from the M-per-class images (random crops "
                                  "and flips as in pretraining)", group=ALGORITHM)
    lr: float | None = option(None, "SGD learning rate, Nesterov momentum, cosine-annealed to 0; default: "
                                    "pretraining's (0.1; 0.02 for ResNets on digits)", group=ALGORITHM)
    momentum: float = option(0.9, "Nesterov momentum", group=ALGORITHM)
    weight_decay: float = option(5e-4, "weight decay", group=ALGORITHM)
    alpha: float = option(KD_ALPHA, "weight of the distillation term; 1 - alpha weighs the cross-entropy",
                          group=ALGORITHM)
    temperature: float = option(KD_TEMPERATURE, "distillation temperature T (the KL term is scaled by T^2)",
                                group=ALGORITHM)
    beta: float = option(KD_BETA, "attention-transfer weight of the fused op: the AT paper's 1000 with its factor 1/2",
                         group=ALGORITHM)
    seed: int = option(0, "seed of the student's initialisation, the M-per-class draw and the batches",
                       group=ALGORITHM)
    device: str = option("auto", "cpu, cuda, cuda:N, or auto", group=SPEED)
    backend: str = option("auto", "loss kernels", group=SPEED, choices=BACKENDS)
    eval_every: int | None = option(None, "test the student every this many steps; default: a tenth of the steps",
                                    group=OUTPUTS)
    checkpoint_minutes: float = option(5.0, "write a checkpoint at least this often", group=OUTPUTS)

    def resolved(self, train_size: int | None = None) -> FewShotConfig:
        """A copy with the defaults filled in (`train_size`: the number of training images, for the default number
        of steps); raises ValueError on bad values."""
        c = dataclasses.replace(self)
        c._resolve_data()
        c._resolve_networks()
        c.samples_per_class = parse_samples_per_class(c.samples_per_class)
        check_count(c.batch_size, "batch_size")
        if c.iterations is None and train_size is not None:
            c.iterations = PRETRAIN_EPOCHS[c.dataset] * math.ceil(train_size / c.batch_size)
        if c.iterations is not None:
            check_count(c.iterations, "iterations")
            c.eval_every = max(c.iterations // 10, 1) if c.eval_every is None else c.eval_every
            check_count(c.eval_every, "eval_every")
        c.lr = default_pretrain_lr(c.dataset, c.student) if c.lr is None else c.lr
        check_positive(c.lr, "lr")
        check_non_negative(c.momentum, "momentum")
        check_non_negative(c.weight_decay, "weight_decay")
        if not isinstance(c.alpha, (int, float)) or isinstance(c.alpha, bool) or not 0 <= c.alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {c.alpha!r}")
        check_positive(c.temperature, "temperature")
        check_non_negative(c.beta, "beta")
        check_count(c.seed, "seed", minimum=0)
        check_choice(c.backend, BACKENDS, "backend")
        check_positive(c.checkpoint_minutes, "checkpoint_minutes")
        c.device = str(resolve_device(c.device))
        return c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
