"""Fashion-MNIST from its gzipped IDX files (Debian ``dataset-fashion-mnist``, torchvision's
``FashionMNIST/raw`` layout, or ``--data PATH``), and each item placed on a larger canvas."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
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
