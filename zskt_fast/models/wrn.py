"""Wide residual networks (Zagoruyko & Komodakis), pre-activation basic blocks, CIFAR layout.

Parameter names follow the WideResNet whose pretrained teachers the paper's authors released (`conv1`,
`block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}`, `bn1`, `fc`), so those state dicts load as they are.
forward() returns the logits and the three group outputs (before the final BN-ReLU) as attention features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.same_shape = in_channels == out_channels
        # A 1x1 projection when the width changes; it reads the pre-activated input, as the released teachers do.
        self.convShortcut = None if self.same_shape else nn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                                                   bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        shortcut = x if self.same_shape else self.convShortcut(pre)
        return shortcut + out


class BlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width: conv3x3(16), three groups of (depth-4)/6 blocks of widths 16k, 32k, 64k at strides 1, 2, 2,
    then BN-ReLU, global average pooling and a linear classifier."""

    def __init__(self, depth: int, width: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(f"width, num_classes and in_channels must be >= 1, got {width}, {num_classes}, "
                             f"{in_channels}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = BlockGroup(n, widths[0], widths[1], 1)
        self.block2 = BlockGroup(n, widths[1], widths[2], 2)
        self.block3 = BlockGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He initialisation over fan-out, as the reference WRN code
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        g1 = self.block1(self.conv1(x))
        g2 = self.block2(g1)
        g3 = self.block3(g2)
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn1(g3)), 1).flatten(1)
        return self.fc(pooled), [g1, g2, g3]
