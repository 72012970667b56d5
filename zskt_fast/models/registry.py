"""Classifiers by name: this package's WRN and ResNet, and torchvision's classification models."""
from __future__ import annotations

import re

from torch import nn

from .resnet import ResNet
from .wrn import WideResNet

ARCHITECTURE_HELP = ("'wrn-DEPTH-WIDTH' (wrn-16-1, wrn-16-2, wrn-40-1, wrn-40-2, ...), 'resnet-18', 'resnet-34', or "
                     "'tv:NAME', any torchvision classification model (tv:resnet50, tv:mobilenet_v3_small, ...)")
TORCHVISION_PREFIX = "tv:"


def torchvision_classifiers() -> list[str]:
    """The names of torchvision's classification model builders (not detection, segmentation or video)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_classifier(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import difflib

    import torchvision

    known = torchvision_classifiers()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise ValueError(f"unknown torchvision classifier {TORCHVISION_PREFIX}{name}" +
                         (f": did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?" if close else
                          f"; the {len(known)} known ones include {', '.join(known[:8])}, ..."))
    if in_channels != 3:
        raise ValueError(f"{TORCHVISION_PREFIX}{name} takes 3-channel (RGB) images and the data have {in_channels} "
                         f"channel(s): use a data set of RGB images, or one of this package's architectures")
    # weights=None: nothing is downloaded; the user's file is loaded into it.
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def build_classifier(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A classifier by name: 'wrn-D-K' (for example wrn-40-2), 'resnet-18', 'resnet-34' (these return (logits, attention
    features)), or 'tv:NAME' for torchvision's NAME (returns logits), built without pretrained weights."""
    key = architecture_key(name) if isinstance(name, str) else ""
    if key.startswith(TORCHVISION_PREFIX):
        net = _torchvision_classifier(key[len(TORCHVISION_PREFIX):], num_classes, in_channels)
        net.arch_name = key
        return net
    wrn, resnet = re.fullmatch(r"wrn-(\d+)-(\d+)", key), re.fullmatch(r"resnet-?(\d+)", key)
    if wrn:
        net = WideResNet(int(wrn[1]), int(wrn[2]), num_classes=num_classes, in_channels=in_channels)
    elif resnet:
        net = ResNet(int(resnet[1]), num_classes=num_classes, in_channels=in_channels)
    else:
        raise ValueError(f"unknown architecture {name!r}: expected {ARCHITECTURE_HELP}")
    net.arch_name = key  # named in the errors of checkpoint loading
    return net


def architecture_key(name: str) -> str:
    """The name as build_classifier reads it (lower case, but torchvision's model names are kept as they are)."""
    name = name.strip()
    if name.lower().startswith(TORCHVISION_PREFIX):
        return TORCHVISION_PREFIX + name[len(TORCHVISION_PREFIX):].strip()
    return name.lower()
