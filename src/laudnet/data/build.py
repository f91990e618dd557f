"""The datasets by name: :func:`build_datasets` gives the train and test splits of one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, Subset

from .cluttered import ClutteredObjects
from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, PlacedFashionMNIST
from .folders import CIFAR_STATS, cifar, image_folder

DATASETS = ("cluttered", "fashion-mnist", "fashion-mnist-placed", "cifar10", "cifar100", "imagefolder")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...]


@dataclass
class DataSplits:
    """The train and test datasets of one dataset, and what they are."""

    train: Dataset
    test: Dataset
    info: DataInfo


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None or limit >= len(dataset) else Subset(dataset, range(limit))


def build_datasets(name: str, root: str | Path | None = None, *, image_size: int | None = None,
                   train_size: int | None = None, test_size: int | None = None, seed: int = 0) -> DataSplits:
    """The train and test splits of dataset ``name`` (one of :data:`DATASETS`).

    ``image_size`` is the canvas side of ``cluttered`` (default 64) and
    ``fashion-mnist-placed`` (default 56), or the crop side of ``imagefolder`` (224).
    ``train_size`` / ``test_size`` keep the first N samples (the size of ``cluttered``,
    default 8000 / 2000); ``seed`` seeds the procedural data and the placements.
    """
    for what, value in (("train size", train_size), ("test size", test_size), ("image size", image_size)):
        if value is not None and value < 1:
            raise ValueError(f"{what} must be positive, got {value}")
    if name == "cluttered":
        size = image_size or 64
        train = ClutteredObjects(train_size or 8000, size, seed, "train")
        test = ClutteredObjects(test_size or 2000, size, seed, "test")
        return DataSplits(train, test, DataInfo(name, len(ClutteredObjects.CLASSES), 1, size, ClutteredObjects.CLASSES))
    if name == "fashion-mnist":
        if image_size not in (None, 28):
            raise ValueError(f"fashion-mnist images are 28x28, got image size {image_size}; "
                             "use fashion-mnist-placed for a larger canvas")
        return DataSplits(FashionMNIST("train", root, train_size), FashionMNIST("test", root, test_size),
                          DataInfo(name, 10, 1, 28, FASHION_MNIST_CLASSES))
    if name == "fashion-mnist-placed":
        canvas = image_size or 56
        return DataSplits(PlacedFashionMNIST("train", root, canvas, train_size, seed),
                          PlacedFashionMNIST("test", root, canvas, test_size, seed),
                          DataInfo(name, 10, 1, canvas, FASHION_MNIST_CLASSES))
    if name in CIFAR_STATS:
        if image_size not in (None, 32):
            raise ValueError(f"{name} images are 32x32, got image size {image_size}")
        train, test = cifar(name, "train", root), cifar(name, "test", root)
        info = DataInfo(name, len(train.classes), 3, 32, tuple(train.classes))
        return DataSplits(_limit(train, train_size), _limit(test, test_size), info)
    if name == "imagefolder":
        size = image_size or 224
        train, test = image_folder("train", root, size), image_folder("val", root, size)
        info = DataInfo(name, len(train.classes), 3, size, tuple(train.classes))
        return DataSplits(_limit(train, train_size), _limit(test, test_size), info)
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def has_boxes(dataset: Dataset) -> bool:
    """Whether ``dataset`` knows where the object of each image is (``dataset.box(i)``)."""
    return callable(getattr(dataset, "box", None))
