"""CMI, contrastive model inversion (Fang et al., IJCAI 2021), as its published code runs it (zju-vipa/CMI at 3f791f9:
datafree/synthesis/contrastive.py, datafree_kd.py, scripts/cmi_cifar10.sh).

One round: the generator re-initialised (every linear and convolution weight from N(0, 0.02), BatchNorm weights from
N(1, 0.02), biases 0), a fresh z and random targets (sorted), then n_G Adam steps (betas (0.5, 0.999)) of generator
and z on the inversion loss (batch-norm prior, cross-entropy against the targets, decision-adversarial KL) of a
global view (random crop and flip) plus cr x the contrastive term: each image is described by the per-sample means
(instance_means) of the inputs of the teacher's BatchNorm2d layers, concatenated, for its global view and a local view
(a random resized crop of 25-100% of the image, flipped); a projection head (Linear-ReLU-Linear, L2-normalised),
trained with the generator by its own Adam, embeds both; contrastive_loss asks each local view to find its own
global view among the batch's and among up to `negatives` earlier images' drawn from a memory bank. The round's
lowest-loss images join the pool and their features the bank. The student's learning rate drops tenfold at fixed
fractions of the rounds (CMI's MultiStepLR at 120, 150, 180 of 200 epochs).

Data-parallel ranks: the features of the whole batch are gathered (with gradients to each rank's share) so that
every rank computes the contrastive term of the global batch, as one process does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...data import normalise
from ...ops.data_free_losses import contrastive_loss, instance_means
from ..lifecycle.distributed import average_gradients, gather_batch
from ..loops.pool import augment, resized_crop
from .objectives import LayerInputs, batch_norm_layers
from .pool_strategy import PoolStrategy
from .synthesis import FAST_BETAS, _keep_lowest, _Synthesis

RESET_STD = 0.02  # CMI's reset_model: weights from N(0, 0.02) (BatchNorm weights from N(1, 0.02)), biases 0


class ProjectionHead(nn.Module):
    """Linear(F -> F) -> ReLU -> Linear(F -> dim), L2-normalised rows: CMI's MLPHead."""

    def __init__(self, features: int, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(x), dim=1)


class MemoryBank:
    """The features of earlier rounds' images, [capacity, width], the oldest replaced once full; `sample` draws up to
    k rows without replacement."""

    def __init__(self, capacity: int, width: int, device: torch.device):
        self.features = torch.zeros(capacity, width, device=device, dtype=torch.get_default_dtype())
        self.count = self.next = 0

    def add(self, features: torch.Tensor) -> None:
        capacity = self.features.shape[0]
        n = min(features.shape[0], capacity)
        positions = (self.next + torch.arange(n)) % capacity
        self.features[positions.to(self.features.device)] = features[-n:].detach().to(self.features.dtype)
        self.next, self.count = (self.next + n) % capacity, min(self.count + n, capacity)

    def sample(self, k: int, draws: torch.Generator) -> torch.Tensor:
        picked = torch.randperm(self.count, generator=draws)[:k]
        return self.features[picked.to(self.features.device)]

    def state_dict(self) -> dict:
        return {"features": self.features[:self.count].cpu().clone(), "count": self.count, "next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.features.zero_()
        self.features[:state["count"]] = state["features"].to(self.features.device)
        self.count, self.next = int(state["count"]), int(state["next"])


class ContrastiveSynthesis(_Synthesis):
    """CMI's rounds: the generator re-initialised each round, the contrastive term, the head and the bank."""

    def __init__(self, generator: nn.Module, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = generator.train()
        norms = batch_norm_layers(self.teacher)
        if not norms:
            raise ValueError("CMI's contrastive term describes images by the inputs of the teacher's BatchNorm2d "
                             "layers, and the teacher has none: use another method")
        self.features = LayerInputs(norms)
        width = sum(norm.num_features for norm in norms)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 62, (), generator=self.draws)))
            self.head = ProjectionHead(width, self.rounds.head_dim).to(self.device)
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=self.rounds.synthesis_lr)
        self.bank = MemoryBank(self.rounds.bank_size, 2 * width, self.device)

    def reset_generator(self) -> None:
        with torch.no_grad():
            for module in self.generator.modules():  # _BatchNorm: a data-parallel run's GlobalBatchNorm too
                norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
                if norm or isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    mean = 1.0 if norm else 0.0
                    weight = module.weight
                    weight.copy_(mean + RESET_STD * torch.randn(weight.shape, generator=self.draws))
                    if module.bias is not None:
                        module.bias.zero_()

    def _describe(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The global batch's features: the instance means of every layer's input, side by side."""
        return gather_batch(torch.cat([instance_means(x) for x in inputs], dim=1), self.world)

    def step(self, images: torch.Tensor, targets: torch.Tensor, adversarial: bool) -> tuple[torch.Tensor, ...]:
        """The round's loss on one batch, and the images' features [B, 2F] (local, global) for the bank."""
        global_view = normalise(augment(images, self.augmentation, self.draws, self.share, self.batch), self.mean,
                                self.std)
        local_view = normalise(resized_crop(images, self.draws, self.share, self.batch), self.mean, self.std)
        self.features.start()
        inversion = self.loss(global_view, targets, images, adversarial)
        global_features = self._describe(self.features.stop())
        self.features.start()
        self.teacher(local_view)
        local_features = self._describe(self.features.stop())
        cached = self.bank.sample(self.rounds.negatives, self.draws)
        cached_local, cached_global = cached.chunk(2, dim=1)
        projected = self.head(torch.cat([local_features, cached_local, global_features, cached_global]))
        local_embeddings, global_embeddings = projected.chunk(2)
        contrast = contrastive_loss(local_embeddings, global_embeddings, self.batch,
                                    temperature=self.rounds.contrastive_temperature)
        described = torch.cat([local_features, global_features], dim=1).detach()
        return inversion + self.rounds.contrastive * contrast, described

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.reset_generator()
        z = self.draw(self.generator.z_dim).requires_grad_()
        targets = torch.randint(0, self.num_classes, (self.batch,), generator=self.draws).sort()[0]
        targets = targets[self.share].to(self.device)
        params = list(self.generator.parameters())
        optimizer = torch.optim.Adam([{"params": params}, {"params": [z]}], lr=self.rounds.synthesis_lr,
                                     betas=FAST_BETAS)
        best = None  # (loss, images, features) of the lowest-loss step
        for _ in range(self.n_steps):
            images = self.generator(z)
            loss, features = self.step(images, targets, adversarial)
            best = _keep_lowest(best, self.global_loss(loss), images, features)
            optimizer.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world is not None:
                average_gradients(params, self.world)
            self.local_gradient(z)
            optimizer.step()
            self.head_optimizer.step()
        self.objective.end_round()
        self.bank.add(best[2])
        return best[1], best[0]

    def remove_hooks(self) -> None:
        self.features.remove()

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "head": self.head.state_dict(),
                "head_optimizer": self.head_optimizer.state_dict(), "bank": self.bank.state_dict(),
                "draws": self.draws.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.head.load_state_dict(state["head"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.bank.load_state_dict(state["bank"])
        self.draws.set_state(state["draws"])


class ContrastiveStrategy(PoolStrategy):
    """CMI: the pool loop with a generator re-initialised each round and the contrastive term."""
    round_options = ("kd_milestones", "contrastive", "contrastive_temperature", "head_dim", "bank_size", "negatives")


CONTRASTIVE = ContrastiveStrategy(ContrastiveSynthesis, generator_output="sigmoid")
