"""Padding that costs nothing: spatial decisions never keep a patch that lies wholly in
the padding of a batch of images of different sizes.

A detector's transform resizes the images of a batch to different sizes and pads them to
one tensor; a dynamic backbone would otherwise spend its budget, and the sparse engine its
time, on the padded area. While :func:`image_region` holds the unpadded size of each image,
every spatial gate keeps only patches that overlap its image (in masked and sparse
execution alike, so the two stay equal, and in training, so the gates learn with it).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import torch
from torch import Tensor

_region: contextvars.ContextVar[tuple[Tensor, tuple[int, int]] | None] = contextvars.ContextVar(
    "image_region", default=None)


@contextlib.contextmanager
def image_region(sizes: Sequence[tuple[int, int]] | None, input_size: tuple[int, int]) -> Iterator[None]:
    """Within the block, images ``i`` of the network's input (``input_size`` = padded
    ``(H, W)``) occupy ``sizes[i]`` = ``(h, w)`` at its top left; ``None``: no padding."""
    if sizes is None:
        yield
        return
    token = _region.set((torch.tensor([list(s) for s in sizes], dtype=torch.float64), tuple(input_size)))
    try:
        yield
    finally:
        _region.reset(token)


def valid_patches(rows: int, cols: int, side: int, out_size: tuple[int, int]) -> Tensor | None:
    """``(B, rows, cols)`` 0/1 float: which ``side``-pixel patches of a block's output map
    of ``out_size`` overlap the unpadded image, or ``None`` outside :func:`image_region`."""
    region = _region.get()
    if region is None:
        return None
    sizes, (height, width) = region
    top = torch.arange(rows, dtype=torch.float64) * side * height / out_size[0]  # patch edges in input pixels
    left = torch.arange(cols, dtype=torch.float64) * side * width / out_size[1]
    inside = (top[None, :, None] < sizes[:, 0, None, None]) & (left[None, None, :] < sizes[:, 1, None, None])
    return inside.float()
