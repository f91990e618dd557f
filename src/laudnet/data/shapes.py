"""Procedural detection scenes: shapes on noise, with boxes and instance masks, seeded and
stored nowhere (the detection counterpart of :mod:`.cluttered`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import checks
from .cluttered import ClutteredObjects, shape_mask


def _range(name: str, value: int | tuple[int, int], minimum: int) -> tuple[int, int]:
    """``value`` (an int or a ``(low, high)`` pair) as an inclusive range of at least ``minimum``."""
    low, high = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    low, high = checks.integer(f"{name} low", low, minimum), checks.integer(f"{name} high", high, minimum)
    if low > high:
        raise ValueError(f"{name} must be an int or a (low, high) pair with low <= high, got {value!r}")
    return low, high


class ShapesDetection(Dataset):
    """Procedural detection scenes: several shapes of :attr:`CLASSES` on a noisy canvas.

    Sample ``i`` is drawn from a generator seeded by ``(seed, i)``, so a dataset is
    reproducible and needs no storage. A canvas is ``size`` pixels a side (an int, or a
    ``(low, high)`` range from which its height and width are drawn apart, so that one set
    mixes image sizes as COCO does), a random colour with Gaussian noise. On it lie
    ``objects`` shapes (a range, 1–6 by default; fewer when a drawn shape finds no free
    place: shapes do not overlap, so every mask is whole), each in its own colour, of a side
    drawn log-uniformly from 3 % to 50 % of the canvas's shorter side (at least 6 pixels)
    so that COCO's small, medium and large objects all occur on large canvases, with an
    aspect ratio from 0.6 to 1.6.

    Items are ``(image, target)`` in torchvision's detection format: ``image`` a
    ``(3, H, W)`` float tensor in [0, 1]; ``target`` a dict of ``boxes`` (float ``(N, 4)``,
    ``x1, y1, x2, y2``, the tight box of the mask, ``x2``/``y2`` exclusive), ``labels``
    (int64 ``(N,)``, ``1 + `` the index in :attr:`CLASSES`; 0 is the background), ``masks``
    (uint8 ``(N, H, W)``), ``image_id`` (``i``), ``area`` (the mask's pixels) and
    ``iscrowd`` (zeros).
    """

    CLASSES = ClutteredObjects.CLASSES

    def __init__(self, length: int, size: int | tuple[int, int] = (256, 800),
                 objects: int | tuple[int, int] = (1, 6), seed: int = 0, noise: float = 0.08) -> None:
        self.length = checks.positive_int("length", length)
        self.size = _range("size", size, 32)
        self.objects = _range("objects", objects, 1)
        self.seed = checks.integer("seed", seed, 0)
        self.noise = checks.number("noise", noise, 0.0)

    @property
    def classes(self) -> tuple[str, ...]:
        """Names of the labels ``1 … len(classes)``."""
        return self.CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, index])
        height, width = (int(n) for n in rng.integers(self.size[0], self.size[1] + 1, 2))
        background = rng.uniform(0.15, 0.85, 3)
        image = background[:, None, None] + rng.normal(0.0, self.noise, (3, height, width))
        short = min(height, width)
        smallest, largest = max(6.0, 0.03 * short), 0.5 * short
        placed, masks, labels = [], [], []
        for _ in range(int(rng.integers(self.objects[0], self.objects[1] + 1))):
            side = math.exp(rng.uniform(math.log(smallest), math.log(largest)))
            aspect = math.sqrt(math.exp(rng.uniform(math.log(0.6), math.log(1.6))))
            h, w = max(6, min(height, round(side * aspect))), max(6, min(width, round(side / aspect)))
            label = int(rng.integers(len(self.CLASSES)))
            colour = rng.uniform(0.0, 1.0, 3)
            while np.abs(colour - background).max() < 0.35:  # visible against the background
                colour = rng.uniform(0.0, 1.0, 3)
            for _ in range(20):  # a free place, or none
                top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
                if all(top >= b or top + h <= t or left >= r or left + w <= l for t, l, b, r in placed):
                    break
            else:
                continue
            v, u = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
            mask = np.zeros((height, width), bool)
            mask[top:top + h, left:left + w] = shape_mask(self.CLASSES[label], u, v)
            placed.append((top, left, top + h, left + w))
            masks.append(mask)
            labels.append(label + 1)
            image[:, mask] = colour[:, None] + rng.normal(0.0, self.noise, (3, int(mask.sum())))
        masks = np.stack(masks) if masks else np.zeros((0, height, width), bool)
        target = {
            "boxes": torch.tensor([_tight_box(m) for m in masks], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
            "image_id": index,
            "area": torch.from_numpy(masks.sum(axis=(1, 2)).astype(np.float32)),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
        }
        return torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)), target


def _tight_box(mask: np.ndarray) -> list[float]:
    """``x1, y1, x2, y2`` of the pixels of ``mask`` (``x2``, ``y2`` exclusive)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
