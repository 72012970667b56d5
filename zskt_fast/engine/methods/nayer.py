"""NAYER (Tran et al., CVPR 2024), as its published code runs it (tmtuan1307/NAYER: datafree/synthesis/nayer.py,
datafree/models/generator.py, scripts/nayer_*.sh): a generator from a fixed embedding of each class label through
noisy layers (models/label_generator.py), several synthesis loops a round, each into the pool.

One round (an "epoch" there): the whole generator is built again when (round - warmup) or round is a multiple of
g_life (rounds counted from 0); then `warmup_loops` loops in a warm-up round, `loops` after. Each loop re-draws the
noisy layers, draws balanced targets (every class batch // C times, in class order, then the remainder at random),
and takes n_G steps of a new Adam (betas (0.5, 0.999)) over all the generator's weights on the batch-norm prior with
momentum (its averages updated after each loop), the cross-entropy against the targets and, from the first round
that trains the student, the decision-adversarial KL, the teacher seeing a randomly cropped and flipped batch; the
loop's lowest-loss images join the pool. As published, the student is in eval mode in a round's first loop and in
train mode in its later ones (the reference sets it to train mode at the end of the first loop).

The label embedding: the published runs embed "a image of {class}" with CLIP ViT-B/32's text encoder (512 numbers a
class). Nothing here downloads a model: `label_embedding` takes a [classes, width] file made with any text encoder,
or 'random' (the default: 512 numbers a class from N(0, 1), the same for every run, so the classes' codes are
nearly orthogonal and no two classes share an input) or 'one-hot' (the identity).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ...data import normalise
from ...models import LabelGenerator
from ..lifecycle.distributed import average_gradients
from ..loops.pool import augment
from .pool_strategy import PoolStrategy
from .synthesis import FAST_BETAS, _keep_lowest, _Synthesis

EMBEDDINGS = ("random", "one-hot")
RANDOM_EMBEDDING_WIDTH, RANDOM_EMBEDDING_SEED = 512, 0  # CLIP ViT-B/32's text width; one fixed draw for every run
EMBEDDING_SUFFIXES = (".pt", ".pth", ".txt", ".csv")


def label_embedding(setting: str, num_classes: int) -> torch.Tensor:
    """The [num_classes, width] embedding of `setting`: 'random', 'one-hot', or a file (.pt/.pth: a tensor, or a
    dict holding one; .txt/.csv: a row of numbers per class, separated by commas or spaces)."""
    if setting == "random":
        draws = torch.Generator().manual_seed(RANDOM_EMBEDDING_SEED)
        return torch.randn(num_classes, RANDOM_EMBEDDING_WIDTH, generator=draws, dtype=torch.float64)
    if setting == "one-hot":
        return torch.eye(num_classes, dtype=torch.float64)
    path = Path(os.path.expanduser(setting))
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise ValueError(f"label_embedding {setting!r}: give 'random', 'one-hot' or a file ending in "
                         f"{', '.join(EMBEDDING_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"label_embedding {setting!r}: no such file")
    embedding = _read_embedding(path)
    if embedding.dim() != 2 or embedding.shape[0] != num_classes or embedding.shape[1] < 1:
        raise ValueError(f"label_embedding {setting!r} holds a tensor of shape {tuple(embedding.shape)}; the "
                         f"teacher has {num_classes} classes: give a [{num_classes}, width] embedding, a row a class")
    if not torch.isfinite(embedding).all():
        raise ValueError(f"label_embedding {setting!r} holds NaN or infinite values")
    return embedding.to(torch.float64)


def _read_embedding(path: Path) -> torch.Tensor:
    if path.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the same one-line error
            raise ValueError(f"label_embedding {str(path)!r} cannot be read as a tensor file: {error}") from None
        tensors = [obj] if isinstance(obj, torch.Tensor) else \
            [v for v in obj.values() if isinstance(v, torch.Tensor)] if isinstance(obj, dict) else []
        if len(tensors) != 1:
            raise ValueError(f"label_embedding {str(path)!r} must hold one tensor (or a dict with one), found "
                             f"{len(tensors)}")
        return tensors[0].detach().to(torch.float64)
    rows = [line.replace(",", " ").split() for line in path.read_text().splitlines() if line.strip()]
    try:
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    except ValueError as error:  # ragged rows or words
        raise ValueError(f"label_embedding {str(path)!r}: every line must hold the same count of numbers "
                         f"({error})") from None


class NoisyLabelSynthesis(_Synthesis):
    """NAYER's rounds: the label generator (kept across rounds, rebuilt every g_life), its loops, their images."""
    adversarial_lead = 0  # the adversarial term joins in the first round with student steps, not one before

    def __init__(self, generator: LabelGenerator, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = generator.train()

    def loops_in(self, round_index: int) -> int:
        return self.rounds.warmup_loops if round_index < self.rounds.warmup else self.rounds.loops

    def rebuilds_at(self, round_index: int) -> bool:
        life, warmup = self.rounds.generator_life, self.rounds.warmup
        return life > 0 and ((round_index - warmup) % life == 0 or round_index % life == 0)

    def balanced_targets(self) -> torch.Tensor:
        """Every class batch // C times in class order, then batch % C classes at random (this rank's share)."""
        batch, classes = self.batch, self.num_classes
        remainder = torch.randint(0, classes, (batch % classes,), generator=self.draws)
        targets = torch.cat([torch.arange(classes).repeat(batch // classes), remainder])
        return targets[self.share].to(self.device)

    def synthesise(self, round_index: int, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The round's loops; returns their lowest-loss images, one batch a loop (pixels, this rank's share), and
        the last loop's lowest loss."""
        if self.rebuilds_at(round_index):
            self.generator.reinitialise(int(torch.randint(0, 2 ** 62, (), generator=self.draws)))
        batches, loss_best = [], None
        for loop in range(self.loops_in(round_index)):
            if loop > 0:
                self.student.train()  # as published: eval mode in the first loop only
            images, loss_best = self.loop(adversarial)
            batches.append(images)
        return torch.cat(batches), loss_best

    def loop(self, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        generator, params = self.generator, list(self.generator.parameters())
        generator.redraw_noise(self.draws)
        targets = self.balanced_targets()
        optimizer = torch.optim.Adam(params, lr=self.rounds.synthesis_lr, betas=FAST_BETAS)
        best = None
        for _ in range(self.n_steps):
            images = generator(targets, offset=self.share.start)
            inputs = normalise(augment(images, self.augmentation, self.draws, self.share, self.batch), self.mean,
                               self.std)
            loss = self.loss(inputs, targets, images, adversarial)
            best = _keep_lowest(best, self.global_loss(loss), images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world is not None:
                average_gradients(params, self.world)
            optimizer.step()
        self.objective.end_round()  # the prior's averages take the loop's last statistics
        return best[1], best[0]

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "draws": self.draws.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.draws.set_state(state["draws"])


class NoisyLabelStrategy(PoolStrategy):
    """NAYER: the pool loop with the label generator, several loops a round."""
    round_options = ("loops", "warmup_loops", "generator_life", "noisy_width", "label_embedding")

    def make_generator(self, config, image_shape, num_classes: int | None) -> LabelGenerator:
        if num_classes is None:
            raise ValueError("the label generator needs the teacher's number of classes")
        pool = config.pool
        return LabelGenerator(label_embedding(pool.label_embedding, num_classes), image_shape[1], image_shape[0],
                              synthesis_batch=pool.synthesis_batch, noisy_width=pool.noisy_width)


NOISY_LABELS = NoisyLabelStrategy(NoisyLabelSynthesis, generator_output="label")
