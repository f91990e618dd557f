"""Where the images and their objects lie in a detector's padded input batch, on any grid.

The transform resizes each image and pads the batch to one size; a region is drawn once as
a ``(B, 1, H, W)`` map of that input's pixels, then read on the grid of a feature level or
of a block's patches (:func:`cells`): a cell belongs to the region when one of its pixels
does. Feature distillation, the background loss and the share of kept patches on objects
that ``laudnet eval`` reports all read the same regions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def image_pixels(sizes: list[tuple[int, int]], input_size: tuple[int, int],
                 device: torch.device | str = "cpu") -> Tensor:
    """``(B, 1, H, W)``: 1 on image ``i``'s unpadded ``sizes[i]`` (height, width), 0 on the padding."""
    pixels = torch.zeros(len(sizes), 1, *input_size, device=device)
    for i, (height, width) in enumerate(sizes):
        pixels[i, 0, :height, :width] = 1.0
    return pixels


def object_pixels(boxes: list[Tensor], input_size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """``(B, 1, H, W)``: 1 inside image ``i``'s ``(n, 4)`` ``boxes`` (``x1, y1, x2, y2`` in input
    pixels, rounded to whole pixels), 0 elsewhere."""
    pixels = torch.zeros(len(boxes), 1, *input_size, device=device)
    for i, image_boxes in enumerate(boxes):
        for x1, y1, x2, y2 in image_boxes.detach().round().long().tolist():
            pixels[i, 0, max(y1, 0):y2, max(x1, 0):x2] = 1.0
    return pixels


def cells(pixels: Tensor, rows: int, cols: int) -> Tensor:
    """``(B, rows, cols)`` booleans: does the cell of a ``rows × cols`` grid over the input
    (adaptive pooling's bins) hold a pixel of the region ``pixels``?"""
    return F.adaptive_max_pool2d(pixels, (rows, cols))[:, 0] > 0
