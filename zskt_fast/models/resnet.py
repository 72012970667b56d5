"""ResNet-18/34 in the CIFAR layout (3x3 stem, no max-pool), the pair that later zero-shot papers distil.

forward() returns the logits and the outputs of the four stages as attention features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stages of widths 64, 128, 256, 512 at strides 1, 2, 2, 2 with `blocks_per_stage` basic blocks each."""

    LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth not in self.LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(self.LAYOUTS)}, got {depth}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        stages, in_width = [], 64
        for width, stride, blocks in zip(widths, strides, self.LAYOUTS[depth]):
            stages.append(nn.Sequential(*[BasicBlock(in_width if i == 0 else width, width, stride if i == 0 else 1)
                                          for i in range(blocks)]))
            in_width = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f1 = self.layer1(F.relu(self.bn1(self.conv1(x))))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return self.linear(F.adaptive_avg_pool2d(f4, 1).flatten(1)), [f1, f2, f3, f4]
