"""Procedural "cluttered objects": the embedded default dataset, seeded and stored nowhere."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


def shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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
        mask = shape_mask(self.CLASSES[label], u, v)
        image[top:top + side, left:left + side] += mask * rng.uniform(0.7, 1.2)
        return image.astype(np.float32), label, (top, left, top + side, left + side)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label, _ = self._draw(index)
        return torch.from_numpy(image)[None], label

    def box(self, index: int) -> tuple[int, int, int, int]:
        """The object's box ``(top, left, bottom, right)``."""
        return self._draw(index)[2]
