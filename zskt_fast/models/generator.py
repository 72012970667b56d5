"""The paper's generator: noise z -> images, no output squashing (no tanh: the images are in the normalised space
of the teacher's inputs). With output 'sigmoid' it is the data-free frameworks' generator (FastDFKD's): the same layers
ending in a sigmoid, images as pixels in [0, 1] that are normalised before the teacher sees them."""
from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """Linear(z_dim -> 128 * (s/4)^2) -> [128, s/4, s/4] -> BN -> up x2 -> conv 128 -> BN -> LeakyReLU(0.2) -> up x2 ->
    conv 64 -> BN -> LeakyReLU(0.2) -> conv channels -> BN(channels, affine) (output 'batchnorm') or sigmoid (output
    'sigmoid'), for s x s images with s divisible by 4."""

    OUTPUTS = ("batchnorm", "sigmoid")

    def __init__(self, z_dim: int = 100, image_size: int = 32, channels: int = 3, output: str = "batchnorm"):
        super().__init__()
        if image_size < 4 or image_size % 4 != 0:
            raise ValueError(f"image_size must be a multiple of 4 (the generator upsamples twice by 2), got "
                             f"{image_size}")
        if z_dim < 1 or channels < 1:
            raise ValueError(f"z_dim and channels must be >= 1, got {z_dim} and {channels}")
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(self.OUTPUTS)}, got {output!r}")
        self.z_dim, self.image_size, self.channels, self.output = z_dim, image_size, channels, output
        self.init_size = image_size // 4
        self.project = nn.Linear(z_dim, 128 * self.init_size ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, channels, 3, padding=1),
            nn.BatchNorm2d(channels, affine=True) if output == "batchnorm" else nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        x = self.project(z).view(z.shape[0], 128, self.init_size, self.init_size)
        return self.body(x)
