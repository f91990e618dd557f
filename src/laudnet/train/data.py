"""Datasets and loaders. Nothing is downloaded: every loader reads local files and says how
to get them when they are missing.

- ``cluttered``: the embedded default, a procedural and seeded "cluttered objects" set: one
  small object of one of eight shape classes at a random position on a larger noisy canvas
  strewn with distractor strokes, so that spatial skipping has something to skip;
- ``fashion-mnist``: the gzipped IDX files (Debian ``dataset-fashion-mnist``, torchvision's
  ``FashionMNIST/raw`` layout, or ``--data PATH``);
- ``fashion-mnist-placed``: each 28×28 item at a random position on a larger empty canvas;
- ``cifar10`` / ``cifar100``: torchvision's on-disk format, with the usual augmentations;
- ``imagefolder``: an ImageNet-style tree ``ROOT/train/CLASS/*.jpg`` and ``ROOT/val/...``.

Datasets whose images hold one object know where it is: ``dataset.box(index)`` gives its
box ``(top, left, bottom, right)`` in pixels (bottom and right exclusive), which evaluation
uses to check that spatial masks fall on the object.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets
from torchvision.transforms import v2

from ..errors import DataError

DATASETS = ("cluttered", "fashion-mnist", "fashion-mnist-placed", "cifar10", "cifar100", "imagefolder")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


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


# --------------------------------------------------------------------- cluttered objects
def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape on coordinates ``u`` (across) and ``v`` (down) in [-1, 1]."""
    a, b, r = np.abs(u), np.abs(v), np.hypot(u, v)
    if kind == "disc":
        return r <= 0.95
    if kind == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if kind == "square":
        return np.maximum(a, b) <= 0.85
    if kind == "frame":
        return (np.maximum(a, b) <= 0.9) & (np.maximum(a, b) >= 0.5)
    if kind == "diamond":
        return a + b <= 1.0
    if kind == "cross":
        return (np.minimum(a, b) <= 0.25) & (np.maximum(a, b) <= 0.95)
    if kind == "x":
        return ((np.abs(u - v) <= 0.35) | (np.abs(u + v) <= 0.35)) & (np.maximum(a, b) <= 0.95)
    if kind == "triangle":
        return (v <= 0.85) & (a <= (v + 0.95) * 0.55)
    raise ValueError(f"unknown shape {kind!r}")


class ClutteredObjects(Dataset):
    """Procedural "cluttered objects": one object of :attr:`CLASSES` on a noisy canvas.

    Sample ``i`` is drawn from a generator seeded by ``(seed, split, i)``, so a dataset is
    reproducible and needs no storage. The object's side is 20–32 % of the canvas, its
    brightness random; around it lie short distractor strokes and dots as bright as objects,
    on Gaussian noise. Classes are balanced (``label = i mod 8``). Images are
    ``(1, size, size)`` float tensors, roughly zero-mean and unit-scale.
    """

    CLASSES = ("disc", "ring", "square", "frame", "diamond", "cross", "x", "triangle")

    def __init__(self, length: int, size: int = 64, seed: int = 0, split: str = "train",
                 distractors: int = 6, noise: float = 0.25) -> None:
        if length < 1:
            raise ValueError(f"dataset length must be positive, got {length}")
        if size < 16:
            raise ValueError(f"canvas size must be at least 16 pixels, got {size}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.length, self.size, self.seed, self.split = length, size, seed, split
        self.distractors, self.noise = distractors, noise

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])
        n = self.size
        image = rng.normal(0.0, self.noise, (n, n))
        for _ in range(self.distractors):  # short strokes and dots
            length = int(rng.integers(2, max(3, n // 10)))
            top, left = (int(t) for t in rng.integers(0, n - length, 2))
            if rng.random() < 0.5:
                image[top, left:left + length] += rng.uniform(0.6, 1.0)
            else:
                image[top:top + length, left] += rng.uniform(0.6, 1.0)
        label = index % len(self.CLASSES)
        side = int(rng.integers(round(0.2 * n), round(0.32 * n) + 1))
        top, left = (int(t) for t in rng.integers(0, n - side + 1, 2))
        coords = (np.arange(side) + 0.5) / side * 2 - 1
        v, u = np.meshgrid(coords, coords, indexing="ij")
        mask = _shape_mask(self.CLASSES[label], u, v)
        image[top:top + side, left:left + side] += mask * rng.uniform(0.7, 1.2)
        return image.astype(np.float32), label, (top, left, top + side, left + side)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label, _ = self._draw(index)
        return torch.from_numpy(image)[None], label

    def box(self, index: int) -> tuple[int, int, int, int]:
        """The object's box ``(top, left, bottom, right)``."""
        return self._draw(index)[2]


# --------------------------------------------------------------------- Fashion-MNIST (IDX)
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # includes a truncated or non-gzip .gz
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"cannot read IDX file {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header is truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    """The directory holding Fashion-MNIST's four IDX files.

    With ``root``: ``root`` itself, ``root/FashionMNIST/raw`` or ``root/raw`` (torchvision's
    layouts). Without: the Debian package's location, then ``./data/FashionMNIST/raw``.
    """
    if root is not None:
        root = Path(root)
        candidates = [root, root / "FashionMNIST" / "raw", root / "raw"]
    else:
        candidates = [DEBIAN_FASHION_MNIST, Path("data") / "FashionMNIST" / "raw"]
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    for directory in candidates:
        if all(_idx_file(directory, stem) for stem in stems):
            return directory
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {', '.join(str(c) for c in candidates)}. Install it with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass --data DIR where DIR holds "
        f"{', '.join(s + '.gz' for s in stems)} (torchvision's FashionMNIST/raw layout works too)"
    )


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_fashion_mnist(root)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    images = read_idx(_idx_file(directory, image_stem))
    labels = read_idx(_idx_file(directory, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, "
                         f"labels {labels.shape}")
    return images, labels.astype(np.int64)


def normalize_fashion_mnist(pixels: Tensor) -> Tensor:
    """uint8 pixels to the normalised float images the models see."""
    return (pixels.float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files; training images get a 2-pixel random crop and a
    horizontal flip. Images are normalised ``(1, 28, 28)`` float tensors."""

    def __init__(self, split: str = "train", root: str | Path | None = None, limit: int | None = None,
                 augment: bool | None = None) -> None:
        images, labels = load_fashion_mnist(split, root)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(images.copy())
        self.labels = torch.from_numpy(labels)
        augment = split == "train" if augment is None else augment
        self.augment = v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()]) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = normalize_fashion_mnist(self.images[index][None])
        if self.augment is not None:
            image = self.augment(image)
        return image, int(self.labels[index])


class PlacedFashionMNIST(Dataset):
    """Each Fashion-MNIST item at a random position on an empty ``canvas × canvas`` image.

    Test positions are seeded per index (reproducible); training positions are drawn anew
    each time (an augmentation). :meth:`box` is the item's tight box (its nonzero pixels)
    at its test position.
    """

    def __init__(self, split: str = "train", root: str | Path | None = None, canvas: int = 56,
                 limit: int | None = None, seed: int = 0) -> None:
        if canvas < 28:
            raise ValueError(f"the canvas must be at least 28 pixels to hold an item, got {canvas}")
        self.items = FashionMNIST(split, root, limit, augment=False)
        self.canvas, self.seed, self.split = canvas, seed, split
        self.background = float(normalize_fashion_mnist(torch.zeros(())))
        rows, cols = self.items.images.amax(dim=2) > 0, self.items.images.amax(dim=1) > 0
        self._extent = torch.stack([_first_true(rows), _first_true(cols),
                                    28 - _first_true(rows.flip(1)), 28 - _first_true(cols.flip(1))], dim=1)

    def __len__(self) -> int:
        return len(self.items)

    def position(self, index: int) -> tuple[int, int]:
        """Top-left corner of the item at its test position."""
        rng = np.random.default_rng([self.seed, index])
        top, left = rng.integers(0, self.canvas - 28 + 1, 2)
        return int(top), int(left)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self.split == "train":
            top, left = (int(t) for t in torch.randint(0, self.canvas - 28 + 1, (2,)))
        else:
            top, left = self.position(index)
        pixels = torch.zeros(1, self.canvas, self.canvas, dtype=torch.uint8)
        pixels[:, top:top + 28, left:left + 28] = self.items.images[index]
        return normalize_fashion_mnist(pixels), int(self.items.labels[index])

    def box(self, index: int) -> tuple[int, int, int, int]:
        """The item's tight box ``(top, left, bottom, right)`` at its test position."""
        top, left = self.position(index)
        t, l, b, r = (int(v) for v in self._extent[index])
        return top + t, left + l, top + b, left + r


def _first_true(flags: Tensor) -> Tensor:
    """Index of the first True per row (0 for rows without any)."""
    return flags.int().argmax(dim=1)


# --------------------------------------------------------------------- CIFAR and ImageFolder
def _cifar(name: str, split: str, root: str | Path | None) -> Dataset:
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


def _imagefolder(split: str, root: str | Path | None, image_size: int) -> Dataset:
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
        train, test = _cifar(name, "train", root), _cifar(name, "test", root)
        info = DataInfo(name, len(train.classes), 3, 32, tuple(train.classes))
        return DataSplits(_limit(train, train_size), _limit(test, test_size), info)
    if name == "imagefolder":
        size = image_size or 224
        train, test = _imagefolder("train", root, size), _imagefolder("val", root, size)
        info = DataInfo(name, len(train.classes), 3, size, tuple(train.classes))
        return DataSplits(_limit(train, train_size), _limit(test, test_size), info)
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def has_boxes(dataset: Dataset) -> bool:
    """Whether ``dataset`` knows where the object of each image is (``dataset.box(i)``)."""
    return callable(getattr(dataset, "box", None))


# --------------------------------------------------------------------- loaders
def train_loader(dataset: Dataset, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0) -> DataLoader:
    """Shuffled training batches; each rank gets its own share of every epoch.

    The order depends only on ``seed`` and the epoch (``loader.sampler.set_epoch``), so a
    resumed run sees the batches it would have seen; workers are started anew each epoch,
    seeded from the main process's generator (which the loop reseeds every epoch), so their
    augmentations repeat too. Incomplete last batches are dropped.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    drop_last = len(sampler) > batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last)


def eval_loader(dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                workers: int = 0) -> DataLoader:
    """Batches in order; rank r of w gets samples r, r + w, … (no padding, so that summed
    counts over the ranks are exact)."""
    if world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)

