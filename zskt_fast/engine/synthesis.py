"""The synthesis-and-pool methods' pieces: one round's synthesis (FastDFKD's meta-learned generator, DeepInversion's
optimised images) and the student's steps on pool batches. engine/loop.py (synthesis_and_pool) runs them.

FastDFKD (Fang et al., AAAI 2022), one round: a copy of the meta generator and a fresh latent batch z are optimised
together (Adam, betas (0.5, 0.999)) for n_G steps on the generator objective of the round (engine/objectives.py: the
batch-norm prior with its momentum, the cross-entropy against random targets, and after the warm-up the
decision-adversarial KL); the images of the lowest-loss step go to the pool; the meta generator then takes one Adam
step (learning rate n_G * the copy's) along the sum of the copy's gradients over the n_G steps: the first-order MAML
update. DeepInversion (Yin et al. 2020), one round: a batch of images, drawn from N(0, 1) in the teacher's input space,
optimised by Adam (betas (0.5, 0.99)) on the prior, the cross-entropy against random targets, the image priors and
the competition term, each step on a randomly shifted (and flipped) copy, clipped to valid pixels after each step;
the pool receives the images the last step leaves.

Every random draw (z, targets, augmentations, the re-initialisation) comes from one CPU generator per piece, seeded from
the run's seed and checkpointed with it; data-parallel ranks draw the global batch and keep their share.
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from .distributed import World, average_gradients, mean_over_ranks
from .objectives import GeneratorObjective, student_loss
from .pool import ImagePool, augment, denormalise, normalise
from .recipes import KD_MIN_LR, KD_MOMENTUM, ObjectiveSettings, PoolSettings, StepSettings
from .speed import AMP_DTYPES

FAST_BETAS, DEEPINVERSION_BETAS = (0.5, 0.999), (0.5, 0.99)
JITTER_FRACTION = 8  # DeepInversion shifts its images by up to an eighth of their side each step
FIRST_LAYER_STD = 0.02  # FastDFKD re-initialises the generator's first layers from N(0, 0.02), bias 0


def autocast_for(device: torch.device, amp: str, synthesis: bool = False):
    """The steps' autocast: bf16 for all; fp16 for the student's steps only (they have a loss scaler), the synthesis
    in float32."""
    dtype = AMP_DTYPES[amp]
    if dtype is None or (synthesis and dtype == torch.float16):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def _share(world: World | None, batch: int) -> slice:
    return world.share(batch) if world is not None else slice(0, batch)


def _keep_lowest(best: tuple | None, loss: torch.Tensor, images: torch.Tensor) -> tuple:
    """(loss, images) of the step with the lowest loss so far (the earlier one on ties), without a host sync."""
    loss, images = loss.detach(), images.detach()
    if best is None:
        return loss, images
    better = loss < best[0]
    return torch.where(better, loss, best[0]), torch.where(better, images, best[1])


class _Synthesis:
    """What both syntheses share: the teacher's (and student's) outputs on a batch, the round's objective."""

    def __init__(self, teacher: nn.Module, student: nn.Module, objective: GeneratorObjective, steps: StepSettings,
                 pool: PoolSettings, *, image_shape: tuple[int, int, int], num_classes: int, n_steps: int,
                 normalisation, augmentation: str, device: torch.device, world: World | None, seed: int):
        self.teacher, self.student, self.objective = teacher, student, objective
        self.image_shape, self.n_steps = tuple(image_shape), n_steps
        self.steps, self.pool, self.num_classes = steps, pool, num_classes
        self.mean, self.std = normalisation
        self.augmentation, self.device, self.world = augmentation, torch.device(device), world
        self.generator = torch.Generator().manual_seed(seed)
        self.share = _share(world, steps.batch_size)

    def draw(self, *shape) -> torch.Tensor:
        """N(0, 1) noise of the global batch; this rank's share, on the device."""
        return torch.randn(self.steps.batch_size, *shape, generator=self.generator)[self.share].to(self.device)

    def targets(self) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (self.steps.batch_size,),
                             generator=self.generator)[self.share].to(self.device)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor, adversarial: bool):
        """The generator objective on `inputs` (what the teacher sees); `images`: what the image priors read."""
        objective = self.objective
        with autocast_for(self.device, self.steps.amp, synthesis=True):
            student_logits = self.student(inputs)[0] if objective.needs_student and adversarial else None
            objective.start_collecting()
            teacher_logits, _ = self.teacher(inputs)
            bn_inputs, classifier_inputs = objective.stop_collecting()
            return objective.loss(student_logits, teacher_logits, bn_inputs, classifier_inputs, targets=targets,
                                  images=images, adversarial=adversarial)

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss of the global batch (each rank's holds the mean over its share): what picks the round's batch."""
        return mean_over_ranks(loss.detach().clone(), self.world) if self.world is not None else loss

    def local_gradient(self, tensor: torch.Tensor) -> None:
        """A rank's gradient of a leaf it alone holds (its share of z or of the images) is the world size times the
        global batch's (every rank's loss is a mean over its share): scaled back, as one process computes it."""
        if self.world is not None and tensor.grad is not None:
            tensor.grad.div_(self.world.size)


class MetaGeneratorSynthesis(_Synthesis):
    """FastDFKD's synthesis: the meta generator (trained by first-order MAML across rounds) and one round's copy."""

    def __init__(self, generator: nn.Module, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.meta_generator = generator
        self.meta_optimizer = torch.optim.Adam(generator.parameters(), lr=self.n_steps * self.pool.synthesis_lr,
                                               betas=FAST_BETAS)

    def reset_first_layer(self) -> None:
        """FastDFKD's re-initialisation (`reset_l0` at its HEAD, c188487): the generator's first linear layer and its
        first BatchNorm2d, each weight from N(0, 0.02) and bias 0, in that order (the modules' order)."""
        generator = self.meta_generator
        first_norm = next(m for m in generator.body if isinstance(m, nn.BatchNorm2d))
        with torch.no_grad():
            for layer in (generator.project, first_norm):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=self.generator) * FIRST_LAYER_STD)
                layer.bias.zero_()

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One round: the copy's n_G steps, the meta step; returns the lowest-loss images (pixels in [0, 1], this
        rank's share) and their loss."""
        if self.pool.reset_round and round_index + 1 == self.pool.reset_round:  # rounds counted from 1 there
            self.reset_first_layer()
        fast = copy.deepcopy(self.meta_generator)
        z = self.draw(self.meta_generator.z_dim).requires_grad_()
        targets = self.targets()
        optimizer = torch.optim.Adam([{"params": list(fast.parameters())},
                                      {"params": [z], "lr": self.pool.z_lr}], lr=self.pool.synthesis_lr,
                                     betas=FAST_BETAS)
        meta_gradients = [torch.zeros_like(p) for p in self.meta_generator.parameters()]
        best = None
        for _ in range(self.n_steps):
            images = fast(z)
            inputs = normalise(augment(images, self.augmentation, self.generator, self.share,
                                       self.steps.batch_size), self.mean, self.std)
            loss = self.loss(inputs, targets, images, adversarial)
            best = _keep_lowest(best, self.global_loss(loss), images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world is not None:
                average_gradients(list(fast.parameters()), self.world)
            self.local_gradient(z)
            for total, p in zip(meta_gradients, fast.parameters()):
                if p.grad is not None:
                    total.add_(p.grad)
            optimizer.step()
        self.objective.end_round()
        self.meta_step(meta_gradients)
        return best[1], best[0]

    def meta_step(self, gradients: list[torch.Tensor]) -> None:
        """The first-order MAML update: the meta generator steps along the summed gradients of its copy."""
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, gradient in zip(self.meta_generator.parameters(), gradients):
            p.grad = gradient
        self.meta_optimizer.step()

    def state_dict(self) -> dict:
        return {"generator": self.meta_generator.state_dict(), "meta_optimizer": self.meta_optimizer.state_dict(),
                "draws": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.meta_generator.load_state_dict(state["generator"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.generator.set_state(state["draws"])


class ImageSynthesis(_Synthesis):
    """DeepInversion's synthesis: a batch of images optimised directly."""

    def jitter(self, images: torch.Tensor) -> torch.Tensor:
        """The whole batch shifted (cyclically) by up to an eighth of its side each way, and flipped with probability
        1/2 where the data set's augmentation flips."""
        limit = max(images.shape[-1] // JITTER_FRACTION, 0)
        shifts = torch.randint(-limit, limit + 1, (2,), generator=self.generator).tolist()
        flip = bool(torch.rand((), generator=self.generator) < 0.5) and "flip" in self.augmentation
        images = torch.roll(images, shifts=shifts, dims=(2, 3))
        return images.flip(3) if flip else images

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.image_shape
        x = self.draw(c, h, w).requires_grad_()
        targets = self.targets()
        optimizer = torch.optim.Adam([x], lr=self.pool.synthesis_lr, betas=DEEPINVERSION_BETAS)
        low = normalise(torch.zeros(1, c, 1, 1, device=self.device), self.mean, self.std)
        high = normalise(torch.ones(1, c, 1, 1, device=self.device), self.mean, self.std)
        for _ in range(self.n_steps):
            jittered = self.jitter(x)
            loss = self.loss(jittered, targets, jittered, adversarial)  # the image priors too read the jittered batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.local_gradient(x)
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        self.objective.end_round()
        # The round's final images, as the published code's pool receives them: its `best_inputs = inputs.data`
        # aliases the tensor that every later step updates (and clips) in place.
        return denormalise(x.detach(), self.mean, self.std).clamp(0, 1), self.global_loss(loss)

    def state_dict(self) -> dict:
        return {"draws": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["draws"])


class PoolStudentSteps:
    """The student's steps on pool batches: KD (T^2 KL at T, or L1) against the teacher on the same augmented batch,
    SGD with momentum and weight decay, the learning rate cosine-annealed over the rounds after the warm-up."""

    def __init__(self, teacher: nn.Module, student: nn.Module, objectives: ObjectiveSettings, steps: StepSettings,
                 pool: PoolSettings, *, normalisation, augmentation: str, device: torch.device, world: World | None,
                 seed: int):
        self.teacher, self.student, self.objectives, self.steps, self.pool = teacher, student, objectives, steps, pool
        self.mean, self.std = normalisation
        self.augmentation, self.device, self.world = augmentation, torch.device(device), world
        self.optimizer = torch.optim.SGD(student.parameters(), lr=pool.kd_lr, momentum=KD_MOMENTUM,
                                         weight_decay=pool.kd_weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type) if AMP_DTYPES[steps.amp] == torch.float16 else None
        self.generator = torch.Generator().manual_seed(seed)
        self._forward = self._loss
        if steps.compile != "off":
            from ..ops import key_compile_caches_by_build
            key_compile_caches_by_build()
            self._forward = torch.compile(self._loss, mode=steps.compile, fullgraph=False)

    def set_learning_rate(self, round_index: int, rounds: int) -> float:
        """Cosine from kd_lr at the first round after the warm-up to 2e-4 at the end, one value per round (as the
        published code steps its scheduler once per round)."""
        warmup = self.pool.warmup
        progress = (round_index - warmup) / max(rounds - warmup, 1)
        lr = KD_MIN_LR + (self.pool.kd_lr - KD_MIN_LR) * (1 + math.cos(math.pi * progress)) / 2
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _loss(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast_for(self.device, self.steps.amp):
            with torch.no_grad():
                teacher_logits, _ = self.teacher(inputs)
            logits, _ = self.student(inputs)
            loss = student_loss(self.objectives, self.steps, logits, teacher_logits, [], [])
        return loss, logits, teacher_logits

    def step(self, pool: ImagePool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD step on an augmented pool batch; returns the loss and both networks' logits."""
        inputs = normalise(augment(pool.sample(), self.augmentation, self.generator), self.mean, self.std)
        if self.steps.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        loss, logits, teacher_logits = self._forward(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        params = list(self.student.parameters())
        if self.scaler is None:
            loss.backward()
            if self.world is not None:
                average_gradients(params, self.world)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if self.world is not None:
                average_gradients(params, self.world)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.detach(), logits.detach(), teacher_logits.detach()

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "draws": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["draws"])
