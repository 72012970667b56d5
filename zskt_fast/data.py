"""Data sets: only used to test the student and to pretrain teachers; the distillation never touches them.

cifar10, cifar100 and svhn come through torchvision from a local folder (`root`), downloaded only when asked. folder is
any torchvision ImageFolder (one subfolder of images per class) at `root`. digits is the 8x8 handwritten-digits set
that ships inside scikit-learn: the image data set that works on a machine without internet.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "folder")
DEFAULT_DATA_ROOT = "data"  # where CIFAR-10/100, SVHN and image folders are looked for
FOLDER_SPLITS = {"train": ("train",), "test": ("test", "val", "")}  # subfolders of an image folder, first found wins
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
    # The usual CIFAR-100 statistics of its training images.
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop+flip"),
    # Image folders: the class count is the folder's; the size, channels and normalisation are the user's, by default
    # 32x32 RGB with the ImageNet statistics that torchvision's classifiers are trained with.
    "folder": DatasetInfo("folder", 0, 3, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "crop+flip"),
    # Pixel values 0..16 scaled to [0, 1]; mean and std of the 1,400 training images.
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3758,), "shift"),
}


class DatasetNotFound(FileNotFoundError):
    """A data set's files are not where they were looked for."""


class DataError(ValueError):
    """An image folder that cannot serve as a data set: fewer than two classes, a class folder without images, or
    images that cannot be read."""


def normalisation_of(name: str, mean=None, std=None, channels: int | None = None
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel: the given ones, checked against the data set's channel count (`channels` for an image
    folder), else its defaults."""
    info = dataset_info(name, channels=channels)
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


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Pixels in [0, 1] -> the teacher's input space."""
    shape = (1, -1, 1, 1)
    return (images - torch.tensor(mean, device=images.device, dtype=images.dtype).view(shape)) / \
        torch.tensor(std, device=images.device, dtype=images.dtype).view(shape)


def denormalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """The teacher's input space -> pixels (in [0, 1] when the images are valid)."""
    shape = (1, -1, 1, 1)
    return images * torch.tensor(std, device=images.device, dtype=images.dtype).view(shape) + \
        torch.tensor(mean, device=images.device, dtype=images.dtype).view(shape)


def _folder_split(root: str, split: str) -> str | None:
    """The folder of a split of an image folder: root/train for training; root/test, else root/val, else root itself
    for testing (unless it holds a train folder: then the test split is missing)."""
    for sub in FOLDER_SPLITS[split]:
        path = os.path.join(os.path.expanduser(root), sub)
        if os.path.isdir(path) and (sub or not os.path.isdir(os.path.join(path, "train"))):
            return os.path.normpath(path)
    return None


def folder_classes(root: str, split: str = "test") -> list[str]:
    """The class names (subfolders) of an image folder's split; raises DatasetNotFound saying what was looked for,
    DataError for fewer than two classes or a class folder that holds no image."""
    path = _folder_split(root, split)
    wanted = " or ".join(os.path.join(root, sub) if sub else root for sub in FOLDER_SPLITS[split])
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir()) if path else []
    if not classes:
        raise DatasetNotFound(f"folder data set: no class subfolders in {wanted} (an image folder holds one subfolder "
                              f"of images per class, as torchvision's ImageFolder reads)")
    if len(classes) < 2:
        raise DataError(f"folder data set {path}: one class subfolder ({classes[0]}); a classifier, and its "
                        f"distillation, needs at least two classes")
    empty = [os.path.join(path, c) for c in classes if not _holds_images(os.path.join(path, c))]
    if empty:
        raise DataError(f"folder data set: {len(empty)} class folder(s) hold no image: {', '.join(empty[:5])} (images "
                        f"are files ending in {', '.join(_image_extensions())}); add images or remove the folder")
    return classes


def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return IMG_EXTENSIONS


def _holds_images(folder: str) -> bool:
    """Whether ImageFolder finds at least one image in `folder` (it walks subfolders and follows links)."""
    extensions = _image_extensions()
    return any(name.lower().endswith(extensions) for _, _, names in os.walk(folder, followlinks=True)
               for name in names)


# Images decoded once in this process, by (path, size, modification time): checking a folder again costs stat calls.
_READABLE: set[tuple[str, int, int]] = set()
# Pillow's decoders release the GIL for the decoding itself, which dominates for large files only. Measured on 2 cores:
# 640x480 JPEGs 3.3 ms an image on one thread, 1.8 on two; 32x32 PNGs 0.18 ms on one thread, slower on more.
CHECK_WORKERS = 8
THREADED_FROM_BYTES = 16 * 1024  # mean file size from which the images are decoded in threads


def _decode(path: str) -> str | None:
    """None when the file decodes as an image, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # Pillow raises many types: UnidentifiedImageError, OSError (truncated), ...
        return _reason(error)
    return None


def _reason(error: Exception) -> str:
    """Pillow's message without the path it repeats ("cannot identify image file '/a/b.jpg'")."""
    return str(error).split(" '")[0] or type(error).__name__


def check_images(paths: list[str], what: str) -> None:
    """Opens and fully decodes every image of `paths` (large files in threads, with a progress bar for large folders)
    and raises DataError naming the files that cannot be read, before any work is done with them."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    keys, bad = [], []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:  # a link to a missing file, a file removed since the folder was listed
            bad.append((path, error.strerror or str(error)))
            continue
        keys.append((path, stat.st_size, stat.st_mtime_ns))
    todo = [key for key in keys if key not in _READABLE]
    large = bool(todo) and sum(key[1] for key in todo) / len(todo) >= THREADED_FROM_BYTES
    workers = min(CHECK_WORKERS, os.cpu_count() or 1, len(todo)) if large else 1
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        reasons = list(tqdm(pool.map(_decode, [key[0] for key in todo], chunksize=64), total=len(todo),
                            desc=f"checking {what}", unit="image", disable=len(todo) < 5000, leave=False))
    bad += [(key[0], why) for key, why in zip(todo, reasons) if why is not None]
    _READABLE.update(key for key, why in zip(todo, reasons) if why is None)
    if bad:
        bad.sort()
        shown = "; ".join(f"{path} ({why})" for path, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{what}: {len(bad)} of {len(paths)} images cannot be read: {shown}{more}. Replace or "
                        f"remove them")


def read_image(path: str):
    """ImageFolder's loader, naming the file when an image that was readable before no longer is."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as error:
        raise DataError(f"cannot read image {path}: {_reason(error)} (it changed after the data set was checked)"
                        ) from error


def dataset_info(name: str, *, root: str | None = None, image_size: int | None = None,
                 channels: int | None = None) -> DatasetInfo:
    """The data set's classes, channels, image size and default normalisation. `image_size` resizes the images of any
    data set but digits; `channels` (1 or 3) applies to image folders; the class count of an image folder is read
    from `root` (0 without it)."""
    if name not in INFO:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    info = INFO[name]
    if image_size is not None and image_size != info.image_size:
        if name == "digits" or isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
            raise ValueError(f"image_size {image_size!r} does not apply to {name}: " + (
                "digits images are 8x8" if name == "digits" else "give an integer >= 4"))
        info = dataclasses.replace(info, image_size=image_size)
    if channels is not None and channels != info.channels:
        if name != "folder" or channels not in (1, 3):
            raise ValueError(f"channels {channels!r} does not apply to {name}: " + (
                "image folders are read as 1 (grey) or 3 (RGB) channels" if name == "folder" else
                f"its images have {info.channels} channel(s)"))
        info = dataclasses.replace(info, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    if name == "folder" and root is not None:
        info = dataclasses.replace(info, num_classes=len(folder_classes(root)))
    return info


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


def _transform(info: DatasetInfo, augment: bool, mean, std, resize: bool):
    import torchvision.transforms as T

    steps = [T.Grayscale(1)] if info.channels == 1 else []
    if resize:  # image folders hold images of any size; the others are resized only when asked
        steps += [T.Resize(info.image_size), T.CenterCrop(info.image_size)]
    if augment:
        steps.append(T.RandomCrop(info.image_size, padding=max(info.image_size // 8, 1)))
        if "flip" in info.augmentation:
            steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def _image_folder(info: DatasetInfo, root: str, train: bool, transform) -> Dataset:
    from torchvision import datasets

    split = "train" if train else "test"
    folder_classes(root, split)  # a clear error when the split is missing, has one class or an empty one
    data = datasets.ImageFolder(_folder_split(root, split), transform=transform, loader=read_image)
    if train and len(data.classes) != info.num_classes:
        raise DatasetNotFound(f"folder data set {root}: the training split has {len(data.classes)} classes and the "
                              f"test split {info.num_classes}")
    check_images([path for path, _ in data.samples], f"folder data set {_folder_split(root, split)}")
    return data


def _torchvision_dataset(info: DatasetInfo, root: str, train: bool, download: bool, augment: bool, mean,
                         std) -> Dataset:
    from torchvision import datasets

    name = info.name
    transform = _transform(info, augment, mean, std, resize=name == "folder" or info.image_size != 32)
    root = os.path.expanduser(root)
    if name == "folder":
        return _image_folder(info, root, train, transform)
    if name in ("cifar10", "cifar100"):
        version = name[5:]
        expected = os.path.join(root, "cifar-10-batches-py" if version == "10" else "cifar-100-python")
        how = (f"the python version of CIFAR-{version} (cifar-{version}-python.tar.gz from "
               f"https://www.cs.toronto.edu/~kriz/cifar.html) extracted there")
        source = datasets.CIFAR10 if version == "10" else datasets.CIFAR100
        make = lambda: source(root, train=train, download=download, transform=transform)  # noqa: E731
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
                 augment: bool = False, normalisation=None, image_size: int | None = None,
                 channels: int | None = None) -> Dataset:
    """The train or test split of `name`, normalised with `normalisation` = (mean, std), by default the data set's
    (see INFO), at `image_size` and `channels` (see dataset_info); `augment` adds the pretraining augmentation (random
    crops, plus flips for CIFAR and image folders; one-pixel shifts for digits)."""
    info = dataset_info(name, root=root, image_size=image_size, channels=channels)
    mean, std = normalisation or (info.mean, info.std)
    if name == "digits":
        images, labels = _digits_split(train, mean, std)
        return _AugmentedTensors(images, labels, pad=1, flip=False) if augment else TensorDataset(images, labels)
    return _torchvision_dataset(info, root, train, download, augment, mean, std)


def evaluation_loader(name: str, *, root: str = DEFAULT_DATA_ROOT, download: bool = False,
                      batch_size: int = 500, normalisation=None, image_size: int | None = None,
                      channels: int | None = None) -> DataLoader:
    test_set = load_dataset(name, train=False, root=root, download=download, normalisation=normalisation,
                            image_size=image_size, channels=channels)
    return DataLoader(test_set, batch_size=batch_size, shuffle=False)


def dataset_labels(data: Dataset) -> torch.Tensor:
    """The class of every image of a data set returned by load_dataset, without loading the images."""
    for attribute in ("labels", "targets"):  # ours and SVHN; CIFAR and ImageFolder
        values = getattr(data, attribute, None)
        if values is not None:
            return torch.as_tensor(values, dtype=torch.long)
    if isinstance(data, TensorDataset):
        return data.tensors[1].long()
    raise ValueError(f"cannot read the labels of a {type(data).__name__}")
