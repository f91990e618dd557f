"""The datasets by name: :func:`build_datasets` gives the train and test splits of one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, Subset

from .cluttered import ClutteredObjects
from .coco import CocoDetection
from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, PlacedFashionMNIST
from .folders import CIFAR_STATS, cifar, image_folder
from .shapes import ShapesDetection

DATASETS = ("cluttered", "fashion-mnist", "fashion-mnist-placed", "cifar10", "cifar100", "imagefolder",
            "shapes-detection", "coco")
DETECTION_DATASETS = ("shapes-detection", "coco")
"""Datasets of images with boxes and instance masks (the detection task)."""
TASKS = ("classification", "detection")
"""What a dataset trains: labels per image, or boxes and masks per object."""


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...]
    task: str = "classification"


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
    ``fashion-mnist-placed`` (default 56), the crop side of ``imagefolder`` (224), or for
    detection the short side the detector resizes images to (``shapes-detection``: 320,
    whose canvases are 0.8-1.2 times that; ``coco``: 512).
    ``train_size`` / ``test_size`` keep the first N samples (the size of ``cluttered``,
    default 8000 / 2000, and of ``shapes-detection``, 1000 / 200); ``seed`` seeds the
    procedural data and the placements.

    ``coco`` reads ``root/annotations/instances_{train,val}.json`` with the images of
    ``root/train`` and ``root/val`` (the layout :func:`laudnet.data.coco.write_coco` writes).
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
    if name == "shapes-detection":
        size = image_size or 320
        if size < 64:
            raise ValueError(f"shapes-detection needs an image size of at least 64, got {size}")
        canvas = (size * 4 // 5, size * 6 // 5)  # mixed sizes: a batch is padded as with real data
        train = ShapesDetection(train_size or 1000, canvas, seed=2 * seed)
        test = ShapesDetection(test_size or 200, canvas, seed=2 * seed + 1)
        return DataSplits(train, test, _detection_info(name, size, train.classes))
    if name == "coco":
        if root is None:
            raise ValueError("dataset coco needs --data ROOT holding annotations/instances_train.json, "
                             "annotations/instances_val.json and the images in train/ and val/")
        root = Path(root)
        train, test = (CocoDetection(root / split, root / "annotations" / f"instances_{split}.json")
                       for split in ("train", "val"))
        return DataSplits(_limit(train, train_size), _limit(test, test_size),
                          _detection_info(name, image_size or 512, train.classes))
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def _detection_info(name: str, size: int, classes: tuple[str, ...]) -> DataInfo:
    """A detection dataset's info: labels ``1 … K`` and the background 0 make K + 1 classes."""
    return DataInfo(name, len(classes) + 1, 3, size, tuple(classes), task="detection")


def has_boxes(dataset: Dataset) -> bool:
    """Whether ``dataset`` knows where the object of each image is (``dataset.box(i)``)."""
    return callable(getattr(dataset, "box", None))
