"""The three kinds of work in one iteration of Algorithm 1, eager or compiled (loops/graphs.py replays them from
CUDA graphs), for any method whose generator trains inside it (ZSKT, DFAD, DAFL, DFQ).

`AlgorithmOneSteps` runs them eagerly (any device), or, with the `compile` setting, through torch.compile: the
networks and fused losses of each step as one graph (fullgraph), clipping and the Adam update as another. The method
comes in as its generator objective and its student loss (engine/methods/objectives.py).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...models import FeatureNetwork
from ...ops import key_compile_caches_by_build
from ..lifecycle.distributed import World, average_gradients
from ..lifecycle.schedules import cosine_lr
from ..lifecycle.speed import AMP_DTYPES, autocast
from .weight_average import WeightAverage


@contextlib.contextmanager
def repeated_batchnorm_updates(net: nn.Module, passes: int):
    """One train-mode forward pass inside the block updates each BatchNorm's running statistics as `passes` passes
    over the same batch would: n updates r <- (1 - m) r + m s with the same batch statistic s give
    r <- (1 - m)^n r + (1 - (1 - m)^n) s, one update with momentum 1 - (1 - m)^n; num_batches_tracked grows by n.
    Plain tensor work on the device, so it is captured in a CUDA graph like the pass itself."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats and m.momentum is not None] if passes > 1 else []
    momenta = [m.momentum for m in norms]
    for norm, momentum in zip(norms, momenta):
        norm.momentum = 1.0 - (1.0 - momentum) ** passes
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.num_batches_tracked.add_(passes - 1)


@dataclass
class TeacherOutputs:
    logits: torch.Tensor
    features: list[torch.Tensor]


class AlgorithmOneSteps:
    """Holds the networks, the optimisers and the noise source; each method is one piece of Algorithm 1."""

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, settings, device: torch.device,
                 seed: int, *, objective, student_loss: Callable, world: World | None = None):
        """`settings`: the resolved StepSettings. `objective`: the method's generator objective
        (methods/objectives.py: GeneratorObjective, whose `evaluate` gives the loss of a batch); `student_loss`: its
        student loss, f(student_logits, teacher_logits, student_features, teacher_features), whose `reads_features`
        says whether it reads feature maps. `world`: the ranks of a data-parallel run; each draws the global noise
        batch and keeps its share, and gradients are averaged across ranks before each update (batch-norm layers
        synchronise themselves)."""
        self.device = torch.device(device)
        self.world = world if world is not None and world.size > 1 else None
        self.teacher, self.student, self.generator = teacher, student, generator
        self.settings, self.objective, self.student_loss_of = settings, objective, student_loss
        teacher.eval().requires_grad_(False)
        student.train()
        generator.train()
        if settings.channels_last:
            for net in (teacher, student, generator):
                net.to(memory_format=torch.channels_last)
        self.optimizer_G = self._adam(generator, settings.generator_lr)
        self.optimizer_S = self._adam(student, settings.student_lr)
        self.average = WeightAverage(student, settings.student_ema) if settings.student_ema else None
        self.momentum_generator = None  # MAD's (generator_ema): a moving average of G whose images S learns from too
        if settings.generator_ema:
            self.momentum_generator = WeightAverage(generator, settings.generator_ema)
            self.momentum_generator.module.train()  # it makes images as G does, with its batch's statistics
        self.noise = torch.Generator(device=self.device).manual_seed(seed)
        amp_dtype = AMP_DTYPES[settings.amp]
        self.scaler_G = self.scaler_S = None
        if amp_dtype == torch.float16:
            self.scaler_G = torch.amp.GradScaler(self.device.type)
            self.scaler_S = torch.amp.GradScaler(self.device.type)
        self.amp_dtype = amp_dtype
        # The attention features take part only in ZSKT's student loss with beta > 0; else the networks need not pair.
        self.use_attention = student_loss.reads_features
        # This package's networks compile as one graph each step (fullgraph: never a silent fallback); a user's
        # network (wrapped for its features) may hold code dynamo cannot capture whole, and the batch-norm layers of a
        # data-parallel run hold collectives that run eagerly: those graph-break.
        whole = not any(isinstance(net, FeatureNetwork) for net in (teacher, student)) and self.world is None
        self._generator_loss, self._teacher_forward, self._student_loss = (
            self._compiled(fn, fullgraph=whole)
            for fn in (self.generator_loss, self.teacher_forward, self.student_loss))
        self._update_G, self._update_S = (
            self._compiled(lambda o=optimizer, p=list(net.parameters()): self.clip_and_update(p, o), fullgraph=False)
            for net, optimizer in ((generator, self.optimizer_G), (student, self.optimizer_S)))

    def _compiled(self, fn, fullgraph: bool):
        if self.settings.compile == "off":
            return fn
        key_compile_caches_by_build()
        return torch.compile(fn, mode=self.settings.compile, fullgraph=fullgraph)

    def _adam(self, net: nn.Module, lr: float) -> torch.optim.Adam:
        if self.settings.compile == "off":
            return torch.optim.Adam(net.parameters(), lr=lr)
        # A tensor learning rate: the cosine schedule changes it in place instead of recompiling the update.
        return torch.optim.Adam(net.parameters(), lr=torch.tensor(lr, device=self.device),
                                capturable=self.device.type == "cuda")

    def autocast(self):
        return autocast(self.device, self.settings.amp)

    # -- Algorithm 1, piece by piece ---------------------------------------------------------------------------------
    def sample_noise(self) -> torch.Tensor:
        s = self.settings
        z = torch.empty(s.batch_size, s.z_dim, device=self.device).normal_(generator=self.noise)
        return z if self.world is None else z[self.world.share(s.batch_size)]

    def generator_step(self, z: torch.Tensor) -> torch.Tensor:
        """One Adam step of G on the method's generator objective (ZSKT: -KL(T(G(z)) || S(G(z)))), the gradient
        flowing through the networks into G only; then the update of G's moving average (generator_ema)."""
        loss = self.train_generator(z)
        self.average_generator()
        return loss

    def train_generator(self, z: torch.Tensor) -> torch.Tensor:
        """The Adam step of generator_step (what a CUDA graph captures)."""
        loss = self._generator_loss(z)
        self._optimise(loss, self.generator, self.optimizer_G, self.scaler_G, self._update_G, only_this_net=True)
        return loss.detach()

    def average_generator(self) -> None:
        if self.momentum_generator is not None:
            self.momentum_generator.update()

    def images_and_teacher(self, z: torch.Tensor, generator_passes: int = 1) -> tuple[torch.Tensor, TeacherOutputs]:
        """G(z) once per iteration (G does not change during the student steps) and the teacher's outputs on it;
        with MAD's momentum generator the images are G(z) followed by its images of the same z.

        The generator's BatchNorm running statistics take the updates of `generator_passes` train-mode passes over z
        (the authors' code recomputes G(z) before each of the n_S student steps: pass n_S to match it); the images
        are those of one pass, which is all that n passes of an unchanged G over the same z give."""
        with repeated_batchnorm_updates(self.generator, generator_passes):
            images, logits, features = self._teacher_forward(z)
        return images, TeacherOutputs(logits, features)

    def student_step(self, images: torch.Tensor, teacher: TeacherOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step of S on the method's student loss (ZSKT: KL(T || S) + beta * sum_l AT_l), then the update
        of its weight average (student_ema); returns the loss and the student's logits."""
        loss, logits = self.train_student(images, teacher)
        self.average_student()
        return loss, logits

    def train_student(self, images: torch.Tensor, teacher: TeacherOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The Adam step of student_step (what a CUDA graph captures)."""
        loss, logits = self._student_loss(images, teacher.logits, teacher.features)
        self._optimise(loss, self.student, self.optimizer_S, self.scaler_S, self._update_S)
        return loss.detach(), logits.detach()

    def average_student(self) -> None:
        if self.average is not None:
            self.average.update()

    # -- the forward work of each step: what torch.compile compiles as one graph -------------------------------------
    def generator_loss(self, z: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.objective.evaluate(self.generator(z), self.student, self.teacher)

    @torch.no_grad()
    def teacher_forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """G(z) and the teacher's outputs on it, without gradients: the forward work of images_and_teacher."""
        with self.autocast():
            images = self.generator(z)
            if self.momentum_generator is not None:
                images = torch.cat([images, self.momentum_generator.module(z)])
            logits, features = self.teacher(images)
        return images, logits, features if self.use_attention else []

    def student_loss(self, images: torch.Tensor, teacher_logits: torch.Tensor,
                     teacher_features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits, features = self.student(images)
            loss = self.student_loss_of(logits, teacher_logits, features if self.use_attention else [],
                                        teacher_features)
        return loss, logits

    def set_learning_rates(self, iteration: int, iterations: int) -> None:
        for optimizer, base in ((self.optimizer_G, self.settings.generator_lr),
                                (self.optimizer_S, self.settings.student_lr)):
            lr = cosine_lr(base, iteration, iterations)
            for group in optimizer.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr

    # -- shared mechanics --------------------------------------------------------------------------------------------
    def clip_and_update(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip, foreach=True)
        optimizer.step()

    def _optimise(self, loss: torch.Tensor, net: nn.Module, optimizer: torch.optim.Optimizer, scaler, update,
                  only_this_net: bool = False) -> None:
        params = list(net.parameters())
        optimizer.zero_grad(set_to_none=True)
        scaled = scaler.scale(loss) if scaler is not None else loss
        # inputs= keeps autograd from computing the weight gradients of the other networks in the generator step.
        scaled.backward(inputs=params if only_this_net else None)
        if self.world is not None:
            average_gradients(params, self.world)
        if scaler is None:
            update()
            return
        # fp16: the scaler decides on the host whether to step, so this part stays eager.
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip, foreach=True)
        scaler.step(optimizer)
        scaler.update()

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "generator": self.generator.state_dict(),
            "optimizer_G": self.optimizer_G.state_dict(),
            "optimizer_S": self.optimizer_S.state_dict(),
            "noise": self.noise.get_state(),
            "scaler_G": self.scaler_G.state_dict() if self.scaler_G else None,
            "scaler_S": self.scaler_S.state_dict() if self.scaler_S else None,
            **({"objective": objective} if (objective := self.objective.state_dict()) else {}),
            **({"student_average": self.average.state_dict()} if self.average is not None else {}),
            **({"momentum_generator": self.momentum_generator.state_dict()}
               if self.momentum_generator is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        for name in ("optimizer_G", "optimizer_S"):
            optimizer = getattr(self, name)
            kept = [group["lr"] for group in optimizer.param_groups]  # a captured graph reads these tensors
            optimizer.load_state_dict(state[name])
            for group, lr in zip(optimizer.param_groups, kept):
                if isinstance(lr, torch.Tensor):
                    lr.fill_(float(group["lr"]))
                group["lr"] = lr if isinstance(lr, torch.Tensor) else float(group["lr"])
        self.noise.set_state(state["noise"].cpu() if isinstance(state["noise"], torch.Tensor) else state["noise"])
        for name in ("scaler_G", "scaler_S"):
            if getattr(self, name) is not None and state.get(name):
                getattr(self, name).load_state_dict(state[name])
        self.objective.load_state_dict(state.get("objective", {}))
        if self.average is not None:
            self.average.load_state_dict(state["student_average"])
        if self.momentum_generator is not None:
            self.momentum_generator.load_state_dict(state["momentum_generator"])
