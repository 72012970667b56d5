"""Data sets: only used to test the student and to pretrain teachers; the distillation never touches them.

cifar10 and svhn come through torchvision from a local folder (`root`), downloaded only when asked. digits is the 8x8
handwritten-digits set that ships inside scikit-learn: the image data set that works on a machine without internet.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

DATASETS = ("digits", "cifar10", "svhn")
DEFAULT_DATA_ROOT = "data"  # where CIFAR-10 and SVHN are looked for
DIGITS_TRAIN_SIZE = 1400  # of 1,797 images; the remaining 397 are the test split


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str  # what pretraining applies: "crop+flip", "crop" or "shift"


# CIFAR-10 and SVHN: the constants of the authors' code, with which their released teachers were trained and tested
# (for CIFAR-10 the std is not the data's own, about (0.2470, 0.2435, 0.2616)). A classifier file that records its
# normalisation overrides these; one that does not (the authors') gets these.
INFO = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "crop+flip"),
    "svhn": DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "crop"),
    # Pixel values 0..16 scaled to [0, 1]; mean and std of the 1,400 training images.
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3758,), "shift"),
}


class DatasetNotFound(FileNotFoundError):
    """A data set's files are not where they were looked for."""


def normalisation_of(name: str, mean=None, std=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel: the given ones, checked against the data set's channel count, else its defaults."""
    info = dataset_info(name)
    if mean is None and std is None:
        return info.mean, info.std
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != info.channels or len(std) != info.channels:
        raise ValueError(f"{name} images have {info.channels} channel(s): mean and std need {info.channels} value(s) "
                         f"each, got {len(mean)} and {len(std)}")
    if not all(s > 0 and s == s and s != float("inf") for s in std):
        raise ValueError(f"std must be finite and > 0, got {std}")
    return mean, std


def dataset_info(name: str) -> DatasetInfo:
    if name not in INFO:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return INFO[name]


def _digits_split(train: bool, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed split: images shuffled once with seed 0 (writers are mixed), the first 1,400 for training."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.target))
    order = order[:DIGITS_TRAIN_SIZE] if train else order[DIGITS_TRAIN_SIZE:]
    images = torch.tensor(digits.images[order], dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - mean[0]) / std[0]
    return images, torch.tensor(digits.target[order], dtype=torch.long)


class _AugmentedTensors(Dataset):
    """Random shifts (zero padding of `pad` pixels and a random crop) and optional horizontal flips of tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int, flip: bool):
        self.images, self.labels, self.pad, self.flip = images, labels, pad, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        size = image.shape[-1]
        padded = torch.nn.functional.pad(image, (self.pad,) * 4)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        image = padded[:, dy:dy + size, dx:dx + size]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]


def _torchvision_dataset(name: str, root: str, train: bool, download: bool, augment: bool, mean, std) -> Dataset:
    import torchvision.transforms as T
    from torchvision import datasets

    info = INFO[name]
    steps = []
    if augment:
        steps.append(T.RandomCrop(info.image_size, padding=4))
        if "flip" in info.augmentation:
            steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    transform = T.Compose(steps)
    root = os.path.expanduser(root)
    if name == "cifar10":
        expected = os.path.join(root, "cifar-10-batches-py")
        how = ("the python version of CIFAR-10 (cifar-10-python.tar.gz from "
               "https://www.cs.toronto.edu/~kriz/cifar.html) extracted there")
        make = lambda: datasets.CIFAR10(root, train=train, download=download, transform=transform)  # noqa: E731
    else:
        split = "train" if train else "test"
        expected = os.path.join(root, f"{split}_32x32.mat")
        how = f"{split}_32x32.mat from http://ufldl.stanford.edu/housenumbers/ placed there"
        make = lambda: datasets.SVHN(root, split=split, download=download, transform=transform)  # noqa: E731
    if not download and not os.path.exists(expected):
        raise DatasetNotFound(f"{name} not found: looked for {expected}. Ask for a download (download=True, or "
                              f"--download; needs internet) into the data root {root}, or put {how}.")
    try:
        return make()
    except RuntimeError as error:  # torchvision's integrity check
        raise DatasetNotFound(f"{name} under {root} is incomplete or corrupted ({error}); delete it and "
                              f"ask for a download (download=True, or --download), or put {how}.") from error


def load_dataset(name: str, *, train: bool, root: str = DEFAULT_DATA_ROOT, download: bool = False,
                 augment: bool = False, normalisation=None) -> Dataset:
    """The train or test split of `name`, normalised with `normalisation` = (mean, std), by default the data set's
    (see INFO); `augment` adds the pretraining augmentation (random crops, plus flips for CIFAR-10; one-pixel shifts for
    digits)."""
    mean, std = normalisation or normalisation_of(name)
    if name == "digits":
        images, labels = _digits_split(train, mean, std)
        return _AugmentedTensors(images, labels, pad=1, flip=False) if augment else TensorDataset(images, labels)
    return _torchvision_dataset(name, root, train, download, augment, mean, std)


def evaluation_loader(name: str, *, root: str = DEFAULT_DATA_ROOT, download: bool = False,
                      batch_size: int = 500, normalisation=None) -> DataLoader:
    return DataLoader(load_dataset(name, train=False, root=root, download=download, normalisation=normalisation),
                      batch_size=batch_size, shuffle=False)
