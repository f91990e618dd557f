"""Datasets read from folders: CIFAR-10/100 in torchvision's on-disk format and an
ImageNet-style tree ``ROOT/train/CLASS/*.jpg``, ``ROOT/val/...``, with the usual augmentations."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from ..errors import DataError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def cifar(name: str, split: str, root: str | Path | None) -> Dataset:
    root = Path(root or "data")
    mean, std = CIFAR_STATS[name]
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if split == "train" else []
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        return cls(str(root), train=split == "train", transform=v2.Compose(augment + normalize), download=False)
    except RuntimeError:
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        raise FileNotFoundError(
            f"{name} not found: expected torchvision's on-disk format {root / folder}. Pass --data DIR "
            f"holding {folder}/ (get it once with torchvision.datasets.{cls.__name__}(DIR, download=True) "
            "on a machine with internet access)"
        ) from None


def decode_image(path: str):
    """An image file as an RGB PIL image, or :class:`DataError` naming the file that cannot
    be decoded (truncated, not an image)."""
    try:
        return datasets.folder.default_loader(path)
    except (OSError, SyntaxError, ValueError) as error:  # what Pillow raises for bad files
        raise DataError(f"cannot decode image {path} ({error}); remove or replace it") from None


def image_folder(split: str, root: str | Path | None, image_size: int) -> Dataset:
    if root is None:
        raise ValueError("imagefolder needs --data DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg")
    folder = Path(root) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; imagefolder expects DIR/train/<class>/ and "
                                "DIR/val/<class>/ (the ImageNet layout)")
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if split == "train":
        steps = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    return datasets.ImageFolder(str(folder), transform=v2.Compose(steps + normalize), loader=decode_image)
