"""The synthesis-and-pool methods' pieces: one round's synthesis (FastDFKD's meta-learned generator, DeepInversion's
optimised images); engine/loops/loop.py (synthesis_and_pool) runs them, engine/methods/pool_strategy.py builds them.

FastDFKD (Fang et al., AAAI 2022), one round: a copy of the meta generator and a fresh latent batch z are optimised
together (Adam, betas (0.5, 0.999)) for n_G steps on the generator objective of the round (methods/objectives.py: the
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

import copy

import torch
from torch import nn

from ..lifecycle.distributed import World, average_gradients, mean_over_ranks
from ...data import denormalise, normalise
from ..lifecycle.speed import autocast
from ..loops.pool import augment
from .objectives import GeneratorObjective

FAST_BETAS, DEEPINVERSION_BETAS = (0.5, 0.999), (0.5, 0.99)
JITTER_FRACTION = 8  # DeepInversion shifts its images by up to an eighth of their side each step
FIRST_LAYER_STD = 0.02  # FastDFKD re-initialises the generator's first layers from N(0, 0.02), bias 0


def _share(world: World | None, batch: int) -> slice:
    return world.share(batch) if world is not None else slice(0, batch)


def _keep_lowest(best: tuple | None, loss: torch.Tensor, *kept: torch.Tensor) -> tuple:
    """(loss, *kept) of the step with the lowest loss so far (the earlier one on ties), without a host sync."""
    now = tuple(t.detach() for t in (loss, *kept))
    if best is None:
        return now
    better = now[0] < best[0]
    return tuple(torch.where(better, new, old) for new, old in zip(now, best))


class _Synthesis:
    """What every synthesis shares: the teacher's (and student's) outputs on a batch, the round's objective.
    `adversarial_lead`: how many rounds before the student's first the adversarial term joins (FastDFKD's loop: 1)."""
    adversarial_lead = 1

    def __init__(self, teacher: nn.Module, student: nn.Module, objective: GeneratorObjective, steps, rounds, *,
                 image_shape: tuple[int, int, int], num_classes: int, n_steps: int,
                 normalisation, augmentation: str, device: torch.device, world: World | None, seed: int):
        self.teacher, self.student, self.objective = teacher, student, objective
        self.image_shape, self.n_steps = tuple(image_shape), n_steps
        self.steps, self.rounds, self.num_classes = steps, rounds, num_classes  # resolved Step and PoolSettings
        self.mean, self.std = normalisation
        self.augmentation, self.device, self.world = augmentation, torch.device(device), world
        self.draws = torch.Generator().manual_seed(seed)  # every random draw of the synthesis, checkpointed
        self.batch = rounds.synthesis_batch or steps.batch_size  # the global batch a synthesis step makes
        self.share = _share(world, self.batch)

    def draw(self, *shape) -> torch.Tensor:
        """N(0, 1) noise of the global batch; this rank's share, on the device."""
        return torch.randn(self.batch, *shape, generator=self.draws)[self.share].to(self.device)

    def targets(self) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (self.batch,), generator=self.draws)[self.share].to(self.device)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor, adversarial: bool):
        """The generator objective on `inputs` (what the networks see); `images`: what the image priors read. fp16
        runs it in float32: the synthesis has no loss scaler (a skipped step would poison the summed gradients)."""
        with autocast(self.device, self.steps.amp, float16=False):
            return self.objective.evaluate(inputs, self.student, self.teacher, targets=targets, images=images,
                                           adversarial=adversarial)

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss of the global batch (each rank's holds the mean over its share): what picks the round's batch."""
        loss = loss.detach()
        return mean_over_ranks(loss.clone(), self.world) if self.world is not None else loss

    def remove_hooks(self) -> None:
        """Takes off the hooks the synthesis put on the teacher (the user's network)."""

    def local_gradient(self, tensor: torch.Tensor) -> None:
        """A rank's gradient of a leaf it alone holds (its share of z or of the images) is the world size times the
        global batch's (every rank's loss is a mean over its share): scaled back, as one process computes it."""
        if self.world is not None and tensor.grad is not None:
            tensor.grad.div_(self.world.size)


class MetaGeneratorSynthesis(_Synthesis):
    """FastDFKD's synthesis: the meta generator (trained by first-order MAML across rounds) and one round's copy."""

    def __init__(self, generator: nn.Module, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = generator.train()
        self.meta_optimizer = torch.optim.Adam(generator.parameters(), lr=self.n_steps * self.rounds.synthesis_lr,
                                               betas=FAST_BETAS)

    def reset_first_layer(self) -> None:
        """FastDFKD's re-initialisation (`reset_l0` at its HEAD, c188487): the generator's first linear layer and its
        first BatchNorm2d, each weight from N(0, 0.02) and bias 0, in that order (the modules' order)."""
        generator = self.generator
        first_norm = next(m for m in generator.body if isinstance(m, nn.BatchNorm2d))
        with torch.no_grad():
            for layer in (generator.project, first_norm):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=self.draws) * FIRST_LAYER_STD)
                layer.bias.zero_()

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One round: the copy's n_G steps, the meta step; returns the lowest-loss images (pixels in [0, 1], this
        rank's share) and their loss."""
        if self.rounds.reset_round and round_index + 1 == self.rounds.reset_round:  # rounds counted from 1 there
            self.reset_first_layer()
        fast = copy.deepcopy(self.generator)
        z = self.draw(self.generator.z_dim).requires_grad_()
        targets = self.targets()
        optimizer = torch.optim.Adam([{"params": list(fast.parameters())},
                                      {"params": [z], "lr": self.rounds.z_lr}], lr=self.rounds.synthesis_lr,
                                     betas=FAST_BETAS)
        meta_gradients = [torch.zeros_like(p) for p in self.generator.parameters()]
        best = None
        for _ in range(self.n_steps):
            images = fast(z)
            inputs = normalise(augment(images, self.augmentation, self.draws, self.share, self.batch),
                               self.mean, self.std)
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
        for p, gradient in zip(self.generator.parameters(), gradients):
            p.grad = gradient
        self.meta_optimizer.step()

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "meta_optimizer": self.meta_optimizer.state_dict(),
                "draws": self.draws.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.draws.set_state(state["draws"])


class ImageSynthesis(_Synthesis):
    """DeepInversion's synthesis: a batch of images optimised directly (no generator)."""
    generator = None

    def __init__(self, generator: None, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def jitter(self, images: torch.Tensor) -> torch.Tensor:
        """The whole batch shifted (cyclically) by up to an eighth of its side each way, and flipped with probability
        1/2 where the data set's augmentation flips."""
        limit = max(images.shape[-1] // JITTER_FRACTION, 0)
        shifts = torch.randint(-limit, limit + 1, (2,), generator=self.draws).tolist()
        flip = bool(torch.rand((), generator=self.draws) < 0.5) and "flip" in self.augmentation
        images = torch.roll(images, shifts=shifts, dims=(2, 3))
        return images.flip(3) if flip else images

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.image_shape
        x = self.draw(c, h, w).requires_grad_()
        targets = self.targets()
        optimizer = torch.optim.Adam([x], lr=self.rounds.synthesis_lr, betas=DEEPINVERSION_BETAS)
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
        return {"draws": self.draws.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.draws.set_state(state["draws"])
