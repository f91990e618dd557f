"""Spatial sparse kernels: index active patches, gather them with their halo, scatter back.

A coarse mask of shape ``(B, rows, cols)`` marks which S×S output patches to compute. The
branch of a block needs, for each output patch, a larger input *window* (the halo of its
convolutions). :func:`window_chain` derives the window geometry through a chain of
convolutions; :func:`gather_windows` copies the active windows out of a feature map;
:func:`scatter_add_patches` adds computed patches into a full-size map. Nothing here knows
about gates or blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class Window:
    """Square windows of side ``size``, placed every ``step`` pixels, the first one starting
    at ``offset`` (negative: it starts in the zero padding)."""

    size: int
    step: int
    offset: int


@dataclass
class PatchIndex:
    """The active patches of a coarse mask: sample, row and column of each, and the grid."""

    batch: Tensor
    row: Tensor
    col: Tensor
    grid: tuple[int, int]

    @classmethod
    def from_mask(cls, mask: Tensor) -> "PatchIndex":
        batch, row, col = (mask > 0).nonzero(as_tuple=True)
        return cls(batch, row, col, (mask.shape[1], mask.shape[2]))

    def __len__(self) -> int:
        return self.batch.numel()


def window_chain(convs: Sequence[tuple[int, int, int, int]], patch: int) -> list[Window]:
    """Windows at the input of each convolution for an output patch of side ``patch``.

    ``convs`` lists ``(kernel, stride, padding, dilation)`` in execution order. The result
    has one more entry than ``convs``: the last is the output patch grid itself.
    """
    windows = [Window(patch, patch, 0)]
    for kernel, stride, padding, dilation in reversed(convs):
        out = windows[0]
        windows.insert(0, Window((out.size - 1) * stride + dilation * (kernel - 1) + 1,
                                 out.step * stride, out.offset * stride - padding))
    return windows


def _padded_windows(x: Tensor, window: Window, grid: tuple[int, int]) -> Tensor:
    """View ``(B, C, rows, cols, size, size)`` of all windows of ``x``, zero-padded."""
    height, width = x.shape[-2:]
    before = -window.offset
    bottom = (grid[0] - 1) * window.step + window.size - height - before
    right = (grid[1] - 1) * window.step + window.size - width - before
    padded = F.pad(x, (before, right, before, bottom))
    return padded.unfold(2, window.size, window.step).unfold(3, window.size, window.step)


def gather_windows(x: Tensor, index: PatchIndex, window: Window) -> Tensor:
    """Copy the windows of the active patches out of ``x``: ``(N, C, size, size)``."""
    windows = _padded_windows(x, window, index.grid)
    return windows.permute(0, 2, 3, 1, 4, 5)[index.batch, index.row, index.col]


def window_validity(height: int, width: int, index: PatchIndex, window: Window, like: Tensor) -> Tensor:
    """``(N, 1, size, size)``: 1 where a gathered window lies inside an ``height×width`` map,
    0 in the padding. Multiplying by it reproduces the zero padding of the next convolution."""
    ones = torch.ones(1, 1, height, width, dtype=like.dtype, device=like.device)
    windows = _padded_windows(ones, window, index.grid)
    return windows[0, 0, index.row, index.col].unsqueeze(1)


def scatter_add_patches(base: Tensor, patches: Tensor, index: PatchIndex, patch: int) -> Tensor:
    """Return ``base`` plus ``patches`` (``(N, C, S, S)``) added at their patch positions.

    Parts of edge patches that fall outside ``base`` are dropped. ``base`` is not modified.
    """
    batch, channels, height, width = base.shape
    rows, cols = index.grid
    out = F.pad(base, (0, cols * patch - width, 0, rows * patch - height))
    tiles = out.view(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    tiles.index_put_((index.batch, index.row, index.col), patches, accumulate=True)
    return out[:, :, :height, :width]


def upsample_mask(mask: Tensor, patch: int, height: int, width: int) -> Tensor:
    """Nearest upsampling of a coarse mask ``(B, rows, cols)`` by ``patch``, cropped to
    ``(B, height, width)``."""
    full = mask.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return full[:, :height, :width]
