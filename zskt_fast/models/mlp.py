"""Small multilayer perceptrons for the two-dimensional demonstration: a classifier that returns (logits, []) like
the image classifiers (no attention features), and a generator from noise to points."""
from __future__ import annotations

import torch
from torch import nn


def _layers(sizes: list[int], activation) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPClassifier(nn.Module):
    def __init__(self, in_features: int = 2, num_classes: int = 3, hidden: int = 64, depth: int = 2):
        super().__init__()
        if min(in_features, num_classes, hidden, depth) < 1:
            raise ValueError("in_features, num_classes, hidden and depth must be >= 1")
        self.net = _layers([in_features] + [hidden] * depth + [num_classes], nn.ReLU)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.net(x), []


class MLPGenerator(nn.Module):
    """z -> points; BatchNorm before each activation, as in the image generator, and a linear output."""

    def __init__(self, z_dim: int = 8, out_features: int = 2, hidden: int = 64, depth: int = 2):
        super().__init__()
        layers, width = [], z_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
