"""Pixel-level sparse kernels: feature maps as rows, convolutions on gathered rows.

A channels-last feature map ``(B, H, W, C)`` is viewed as a matrix of ``B·H·W`` pixel
rows. A convolution evaluated at a set of output pixels only needs, for each of them, the
``k×k`` input rows of its receptive field: :func:`neighbor_table` lists them once per
shape, so computing a convolution at ``m`` pixels is one gather of ``m·k²`` rows and one
GEMM (see :mod:`laudnet.sparse.packed`). Chaining convolutions, each unit is computed
only at the pixels the next one needs (:func:`receptive_mask`): the halo is computed once,
never recomputed per patch. Nothing here knows about gates.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as F

from .extension import extension


@functools.lru_cache(maxsize=32)
def _neighbor_table(batch: int, in_h: int, in_w: int, out_h: int, out_w: int, kernel: int,
                    stride: int, padding: int, dilation: int, device: str) -> Tensor:
    oy = torch.arange(out_h, device=device).view(out_h, 1, 1, 1) * stride - padding
    ox = torch.arange(out_w, device=device).view(1, out_w, 1, 1) * stride - padding
    taps = torch.arange(kernel, device=device) * dilation
    iy, ix = oy + taps.view(1, 1, kernel, 1), ox + taps.view(1, 1, 1, kernel)
    inside = (iy >= 0) & (iy < in_h) & (ix >= 0) & (ix < in_w)
    local = torch.where(inside, iy * in_w + ix, -1).view(1, out_h * out_w, kernel * kernel)
    offsets = (torch.arange(batch, device=device) * in_h * in_w).view(batch, 1, 1)
    table = torch.where(local < 0, batch * in_h * in_w, local + offsets)
    return table.view(batch * out_h * out_w, kernel * kernel)


def neighbor_table(batch: int, in_size: tuple[int, int], out_size: tuple[int, int], kernel: int,
                   stride: int, padding: int, dilation: int, device: torch.device) -> Tensor:
    """``(B·H_out·W_out, k²)``: for every output pixel, the input rows of its receptive field
    in ``(ky, kx)`` order. Taps in the zero padding point one past the last input row
    (``B·H_in·W_in``). Cached per shape."""
    return _neighbor_table(batch, *in_size, *out_size, kernel, stride, padding, dilation, str(device))


def compact_index(rows: Tensor, total: int) -> Tensor:
    """``(total + 1,)`` map from full-map row to its position among ``rows``; every other
    row, and the padding row ``total``, maps to ``len(rows)``, which :func:`gather_taps`
    reads as zeros."""
    index = torch.full((total + 1,), rows.numel(), dtype=torch.long, device=rows.device)
    index[rows] = torch.arange(rows.numel(), device=rows.device)
    return index


def gather_taps(source: Tensor, taps: Tensor) -> Tensor:
    """Rows of ``source`` (``(N, C)``) at ``taps`` (``(m, k²)``): ``(m, k², C)``. Taps
    ``>= N`` stand for zero padding (or pixels not computed) and read zeros."""
    kernels = extension() if source.device.type == "cpu" else None
    if kernels is not None and source.dtype == torch.float32 and source.is_contiguous():
        return kernels.gather_rows(source, taps)
    m, k2 = taps.shape
    flat = taps.reshape(-1)
    rows = source.shape[0]
    cols = source.index_select(0, flat.clamp(max=rows - 1))
    padded = (flat >= rows).nonzero().squeeze(1)
    if padded.numel():
        cols.index_fill_(0, padded, 0)
    return cols.view(m, k2, -1)


def upsample_mask(mask: Tensor, patch: int, height: int, width: int) -> Tensor:
    """Nearest upsampling of a coarse ``(B, rows, cols)`` mask of ``patch × patch`` patches,
    cropped to ``(B, height, width)`` (edge patches may be partial)."""
    full = F.interpolate(mask.unsqueeze(1), scale_factor=patch, mode="nearest") if patch > 1 else mask.unsqueeze(1)
    return full[:, 0, :height, :width]


def receptive_mask(mask: Tensor, kernel: int, stride: int, padding: int, in_size: tuple[int, int]) -> Tensor:
    """Input pixels ``(B, H_in, W_in)`` that a convolution needs to compute the output pixels
    set in ``mask`` (``(B, H_out, W_out)``, 0/1).

    A max-pool over the stride-upsampled mask, so it is exact for 0/1 masks and carries the
    gradient of straight-through masks (the budget loss counts halo pixels with it).
    """
    if kernel == 1 and stride == 1:
        return mask
    batch, out_h, out_w = mask.shape
    spread = F.pad(mask.view(batch, 1, out_h, 1, out_w, 1), (0, stride - 1, 0, 0, 0, stride - 1))
    spread = spread.reshape(batch, 1, out_h * stride, out_w * stride)
    pooled = F.max_pool2d(F.pad(spread, [kernel - 1] * 4), kernel, stride=1)
    return pooled[:, 0, padding:padding + in_size[0], padding:padding + in_size[1]]


def pixel_rows(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` → ``(B·H·W, C)``; a view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def from_rows(rows: Tensor, batch: int, height: int, width: int) -> Tensor:
    """``(B·H·W, C)`` → a ``(B, C, H, W)`` view in channels-last memory."""
    return rows.view(batch, height, width, -1).permute(0, 3, 1, 2)
