"""Spatial skipping: compute a block's output only at the active patches of a coarse mask.

Each unit is computed only at the pixels the next unit needs (the active output pixels,
dilated by the receptive fields of the later units: the halo is computed once, not per
patch); the result is added to the identity at the active pixels only. A unit whose
needed pixels cover most of its map (:data:`DENSE_FRACTION`) computes all of them:
gathering would cost more than the extra pixels. :func:`run` executes, :func:`plan` lists
the operators in expectation, :func:`macs` counts what was executed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..flops import conv_macs
from ..sparse.extension import extension
from ..sparse.plan import Op, axis_coverage, expected_needed
from ..sparse.pixels import receptive_mask, upsample_mask
from .branch import Branch, se_macs

DENSE_FRACTION = 0.85
"""Share of a unit's output pixels above which sparse execution computes all of them."""


def unit_masks(branch: Branch, out_mask: Tensor, sizes: list[tuple[int, int]],
               with_rows: bool = False) -> tuple[list[Tensor], list[Tensor | None]]:
    """For each unit, the ``(B, H, W)`` 0/1 mask of the output pixels sparse execution
    computes for the block output pixels ``out_mask``: the receptive fields of the later
    units, or every pixel once they cover ``DENSE_FRACTION`` of the batch's map; with
    ``with_rows``, also the pixel rows of each mask (``None`` for every pixel).

    For straight-through masks that carry a gradient (training) the dense fallback is
    left out, so that the count stays differentiable for the budget loss."""
    units = branch.units
    masks: list[Tensor] = [out_mask] * len(units)
    rows: list[Tensor | None] = [None] * len(units)
    mask = out_mask
    fallback = not (out_mask.requires_grad and torch.is_grad_enabled())
    full = False
    for i in reversed(range(len(units))):
        if not full:
            count = float(mask.detach().sum())
            full = count == mask.numel()
            if fallback and count >= DENSE_FRACTION * mask.numel():
                mask, full = torch.ones_like(mask.detach()), True
            elif with_rows and not full:
                rows[i] = mask.reshape(-1).nonzero().squeeze(1)
        masks[i] = mask
        if i > 0:
            conv = units[i].conv
            if full and conv.kernel_size[0] >= conv.stride[0]:  # a whole map needs a whole map
                mask = mask.new_ones(mask.shape[0], *sizes[i])
            else:
                full = False
                mask = receptive_mask(mask, conv.kernel_size[0], conv.stride[0], conv.padding[0], sizes[i])
    return masks, rows


def run(branch: Branch, x: Tensor, identity: Tensor, coarse: Tensor, patch: int,
        layer_scale: Tensor | None = None) -> tuple[Tensor, list[Tensor] | None]:
    """``act(identity + up(coarse) * branch(x))`` on channels-last ``x``, computing the
    branch only where the ``(B, rows, cols)`` 0/1 mask of ``patch``-pixel patches (a layer
    gate folded in) is on; ``layer_scale`` ``(B,)`` multiplies each sample's branch.
    Returns the output and, where the PyTorch kernels computed them, the unit masks."""
    sizes = branch.sizes(*x.shape[-2:])
    kernels = extension() if x.device.type == "cpu" else None
    if kernels is not None:  # the same rows and taps, in one call
        rows, unit_rows, unit_taps = kernels.spatial_rows(coarse, patch, branch.geometry(*sizes[0]), DENSE_FRACTION)
        masks, total = None, x.shape[0] * sizes[-1][0] * sizes[-1][1]
    else:
        out_mask = upsample_mask(coarse, patch, *sizes[-1])
        masks, unit_rows = unit_masks(branch, out_mask, sizes, with_rows=True)
        rows, unit_taps, total = out_mask.reshape(-1).nonzero().squeeze(1), None, out_mask.numel()
    if rows.numel() == 0:
        return branch.add_samples(x, identity, []), masks
    if rows.numel() == total and layer_scale is None:
        return branch.dense(x, identity, branch.packed(), active=None), masks
    h, computed = branch.rows(x, branch.packed(), unit_rows, active=rows, unit_taps=unit_taps)
    if rows.numel() == total:
        rows = None
    elif computed is None:
        h = h.index_select(0, rows)
    if layer_scale is not None:
        pixels = sizes[-1][0] * sizes[-1][1]
        per_row = layer_scale.repeat_interleave(pixels) if rows is None else layer_scale[rows // pixels]
        h = h * per_row[:, None]
    return branch.add_rows(x, identity, h, rows), masks


def plan(branch: Branch, batch: int, sizes: list[tuple[int, int]], patch: int, rate: float,
         layer_rate: float = 1.0) -> list[Op]:
    """Operators :func:`run` runs on a batch when ``rate`` of the patches are active at
    random (and the branch runs for ``layer_rate`` of the samples), in expectation."""
    units = branch.units
    out_h, out_w = sizes[-1]
    grid = math.ceil(out_h / patch) * math.ceil(out_w / patch)
    ops = [Op("index", "mask", count=6)]
    rows: list[float | None] = []
    for i in range(len(units)):
        convs = [(u.conv.kernel_size[0], u.conv.stride[0], u.conv.padding[0]) for u in units[i + 1:]]
        needed = expected_needed(axis_coverage(out_h, patch, convs, sizes[i + 1][0]),
                                 axis_coverage(out_w, patch, convs, sizes[i + 1][1]), grid, rate)
        total = sizes[i + 1][0] * sizes[i + 1][1]
        rows.append(None if layer_rate * needed >= DENSE_FRACTION * total else batch * layer_rate * needed)
    active = batch * layer_rate * expected_needed(axis_coverage(out_h, patch, [], out_h),
                                                  axis_coverage(out_w, patch, [], out_w), grid, rate)
    if active == 0:
        return ops + branch.plan_epilogue(batch, sizes, 0.0)
    if active >= batch * out_h * out_w:
        active = None
    return ops + branch.plan_units(batch, sizes, rows) + branch.plan_epilogue(batch, sizes, active)


def macs(branch: Branch, masks: list[Tensor]) -> Tensor:
    """Per-sample MACs (float64 ``(B,)``) of the branch computed at the pixels of the unit
    ``masks`` (:func:`unit_masks`): each unit at its pixels, squeeze-excitation once per
    sample with active output pixels. Differentiable through straight-through masks."""
    units = branch.units
    computed = sum(mask.flatten(1).sum(dim=1, dtype=torch.float64) * conv_macs(u.conv, 1, 1)
                   for u, mask in zip(units, masks))
    excited = (masks[-1].detach().flatten(1).sum(dim=1) > 0).double()  # samples with active pixels
    return computed + excited * sum(se_macs(u.se) for u in units if u.se is not None)
