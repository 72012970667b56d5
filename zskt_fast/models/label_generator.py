"""NAYER's generator (Tran et al., CVPR 2024): images from a fixed embedding of each class label rather than from
noise. The randomness comes from "noisy layers": one linear layer per chunk of `num_classes` rows of the synthesis
batch, whose weights are re-drawn from N(0, 1) before every synthesis loop (redraw_noise), so that the same labels
give other images each loop while the layers after them keep what they learnt."""
from __future__ import annotations

import math

import torch
from torch import nn


class LabelGenerator(nn.Module):
    """embedding[targets] [B, D] -> BatchNorm1d(D) -> the noisy Linear(D -> noisy_width) of each row's chunk (rows
    k*C .. (k+1)*C - 1 of the synthesis batch take layer k, C classes) -> Linear(noisy_width -> 2 ngf (s/4)^2) ->
    [2 ngf, s/4, s/4] -> BN -> up x2 -> conv 2 ngf (no bias) -> BN -> LeakyReLU(0.2) -> up x2 -> conv ngf (no bias) ->
    BN -> LeakyReLU(0.2) -> conv channels -> sigmoid: s x s images as pixels in [0, 1].

    `embedding` [C, D] is fixed (a buffer: saved with the weights, never trained); `synthesis_batch` sets the number
    of noisy layers, ceil(synthesis_batch / C)."""

    def __init__(self, embedding: torch.Tensor, image_size: int, channels: int, *, synthesis_batch: int,
                 noisy_width: int = 1000, ngf: int = 64):
        super().__init__()
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or min(embedding.shape) < 1:
            shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise ValueError(f"the label embedding must be a [classes, width] tensor, got {shape}")
        if image_size < 4 or image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (the generator upsamples twice by 2), got "
                             f"{image_size}")
        for name, value in (("channels", channels), ("synthesis_batch", synthesis_batch),
                            ("noisy_width", noisy_width), ("ngf", ngf)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_classes, width = embedding.shape
        self.image_size, self.channels, self.synthesis_batch = image_size, channels, synthesis_batch
        self.noisy_width, self.ngf, self.init_size = noisy_width, ngf, image_size // 4
        self.register_buffer("embedding", embedding.detach().clone().to(torch.get_default_dtype()))
        self.embedding_norm = nn.BatchNorm1d(width)
        self.noisy = nn.ModuleList(nn.Linear(width, noisy_width)
                                   for _ in range(math.ceil(synthesis_batch / self.num_classes)))
        self.project = nn.Linear(noisy_width, 2 * ngf * self.init_size ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, targets: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Images of the classes `targets` [B]; the rows are positions offset .. offset + B - 1 of the synthesis
        batch (a data-parallel rank's share starts at its offset), which choose their noisy layers."""
        if targets.dim() != 1 or targets.numel() == 0:
            raise ValueError(f"targets must be a non-empty [B] tensor of classes, got {tuple(targets.shape)}")
        if offset < 0 or offset + targets.numel() > self.synthesis_batch:
            raise ValueError(f"rows {offset}..{offset + targets.numel() - 1} lie outside the synthesis batch of "
                             f"{self.synthesis_batch} that the generator's noisy layers were built for")
        embedded = self.embedding_norm(self.embedding[targets])
        chunks, start = [], 0
        while start < embedded.shape[0]:
            layer = (offset + start) // self.num_classes
            stop = min(embedded.shape[0], (layer + 1) * self.num_classes - offset)
            chunks.append(self.noisy[layer](embedded[start:stop]))
            start = stop
        x = self.project(torch.cat(chunks))
        return self.body(x.view(x.shape[0], 2 * self.ngf, self.init_size, self.init_size))

    def redraw_noise(self, draws: torch.Generator) -> None:
        """The noisy layers' weights from N(0, 1) (drawn on the CPU from `draws`), their biases 0."""
        with torch.no_grad():
            for layer in self.noisy:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=draws))
                layer.bias.zero_()

    def reinitialise(self, seed: int) -> None:
        """Every layer initialised again as a newly built generator is (PyTorch's defaults, BatchNorm statistics
        cleared), from `seed`: NAYER's rebuild of the whole generator every g_life epochs, in place."""
        weight = self.project.weight
        with torch.random.fork_rng(devices=[weight.device] if weight.is_cuda else []):
            torch.manual_seed(seed)
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def layout(self) -> dict:
        """What builds the network again (generator.pt), besides its weights."""
        return {"kind": "label", "image_size": self.image_size, "channels": self.channels,
                "synthesis_batch": self.synthesis_batch, "noisy_width": self.noisy_width, "ngf": self.ngf}
