"""Networks of the method: classifiers return (logits, attention features); the generator maps noise to images."""
from __future__ import annotations

import re

from torch import nn

from .generator import Generator
from .wrn import WideResNet

__all__ = ["Generator", "WideResNet", "build_classifier"]


def build_classifier(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A classifier by name: 'wrn-D-K' (for example wrn-40-2)."""
    match = re.fullmatch(r"wrn-(\d+)-(\d+)", name.strip().lower())
    if match:
        return WideResNet(int(match[1]), int(match[2]), num_classes=num_classes, in_channels=in_channels)
    raise ValueError(f"unknown architecture {name!r}: expected 'wrn-DEPTH-WIDTH', e.g. wrn-40-2 or wrn-16-1")
