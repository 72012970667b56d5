"""Classifiers by name, and whether a teacher and a student can be distilled into each other."""
from __future__ import annotations

import re

import torch
from torch import nn

from ..common import eval_mode
from .resnet import ResNet
from .wrn import WideResNet

ARCHITECTURE_HELP = "'wrn-DEPTH-WIDTH' (wrn-16-1, wrn-16-2, wrn-40-1, wrn-40-2, ...), 'resnet-18' or 'resnet-34'"


def build_classifier(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A classifier by name: 'wrn-D-K' (for example wrn-40-2), 'resnet-18' or 'resnet-34'."""
    key = name.strip().lower() if isinstance(name, str) else ""
    wrn, resnet = re.fullmatch(r"wrn-(\d+)-(\d+)", key), re.fullmatch(r"resnet-?(\d+)", key)
    if wrn:
        net = WideResNet(int(wrn[1]), int(wrn[2]), num_classes=num_classes, in_channels=in_channels)
    elif resnet:
        net = ResNet(int(resnet[1]), num_classes=num_classes, in_channels=in_channels)
    else:
        raise ValueError(f"unknown architecture {name!r}: expected {ARCHITECTURE_HELP}")
    net.arch_name = key  # named in the errors of checkpoint loading
    return net


@torch.no_grad()
def feature_shapes(net: nn.Module, in_channels: int, image_size: int) -> tuple[int, list[tuple[int, ...]]]:
    """(number of classes, [C, H, W] of each attention feature) of `net` for images of the given size.

    Runs one forward pass on two blank images in eval mode (BatchNorm statistics untouched) and restores the mode."""
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with eval_mode(net):
        logits, feats = net(torch.zeros(2, in_channels, image_size, image_size, device=device))
    return logits.shape[1], [tuple(f.shape[1:]) for f in feats]


def check_pairable(teacher: nn.Module, student: nn.Module, *, in_channels: int, image_size: int,
                   attention: bool = True, names: tuple[str, str] = ("teacher", "student")) -> None:
    """Raises ValueError unless the two classifiers can be distilled into each other: the same number of classes and,
    when attention transfer is on, the same number of attention features with equal spatial sizes."""
    t_classes, t_shapes = feature_shapes(teacher, in_channels, image_size)
    s_classes, s_shapes = feature_shapes(student, in_channels, image_size)
    t_name, s_name = names
    if t_classes != s_classes:
        raise ValueError(f"the {t_name} predicts {t_classes} classes and the {s_name} {s_classes}")
    if not attention:
        return
    describe = lambda shapes: ", ".join("x".join(map(str, s[1:])) for s in shapes)  # noqa: E731
    if len(t_shapes) != len(s_shapes) or any(t[1:] != s[1:] for t, s in zip(t_shapes, s_shapes)):
        raise ValueError(
            f"the attention features of the {t_name} ({len(t_shapes)} maps of sizes {describe(t_shapes)}) and the "
            f"{s_name} ({len(s_shapes)} maps of sizes {describe(s_shapes)}) cannot be paired layer by layer: choose "
            f"architectures of one family (WRN with WRN, ResNet with ResNet), or set beta to 0 to train without "
            f"attention transfer")
