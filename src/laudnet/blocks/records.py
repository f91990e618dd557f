"""What a block's forward pass did: its activation rate and the MACs sparse execution runs.

The MACs of the branch follow the rule of the block's paradigm, kept next to its executor
and its plan (:func:`laudnet.engine.spatial.macs`, :func:`~laudnet.engine.channel.macs`,
:func:`~laudnet.engine.layer.macs`); the maskers and the shortcut always run. In training the
counts keep the gradient of the straight-through decisions, which the budget loss uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine import Branch
from ..engine import channel as channel_skipping
from ..engine import layer as layer_skipping
from ..engine import spatial as spatial_skipping
from ..gates import Masker
from .decisions import Decision


@dataclass
class BlockRecord:
    """What the last forward pass of a block did, per sample.

    ``rate`` is the activation rate (share of patches / channel groups / blocks computed),
    ``macs`` the MACs the sparse path executes (maskers, halo and shortcut included),
    ``static_macs`` those of the static block; ``patches`` the ``(B, rows, cols)`` patches
    a spatial gate kept (the layer gate folded in; ``None`` without a spatial gate). The
    tensors keep their gradient in training, which the budget and background losses use.
    """

    rate: Tensor
    macs: Tensor
    static_macs: int
    input_shape: tuple[int, ...]
    patches: Tensor | None = None


def static_block_macs(branch: Branch, input_shape: tuple[int, ...]) -> int:
    """MACs of the static block (branch and shortcut) for one ``(C, H, W)`` input."""
    sizes = branch.sizes(input_shape[-2], input_shape[-1])
    return branch.macs(sizes) + branch.shortcut_macs(sizes[-1])


def activation_rate(d: Decision, batch: int, device: torch.device) -> Tensor:
    """``(B,)`` share of the block computed per sample: of its patches or channel groups,
    times the layer gate."""
    if d.spatial is not None:
        rate = d.spatial.flatten(1).mean(dim=1)
    elif d.channel is not None:
        rate = d.channel.mean(dim=1)
    else:
        rate = torch.ones(batch, device=device)
    return rate if d.layer is None else rate * d.layer


def record(branch: Branch, maskers: list[Masker], input_shape: torch.Size, device: torch.device,
           d: Decision | None, channel_mask: Tensor | None = None,
           unit_masks: list[Tensor] | None = None) -> BlockRecord:
    """The record of a pass on a batch of ``input_shape`` with decisions ``d`` (``None``: the
    static block). Channel decisions come expanded to the inner channels (``channel_mask``,
    ``(B, C_inner)``), spatial ones as the pixels each unit computes (``unit_masks``, a
    layer gate folded in, :func:`laudnet.engine.spatial.unit_masks`)."""
    shape = tuple(input_shape[1:])
    static = static_block_macs(branch, shape)
    batch = input_shape[0]
    if d is None:
        ones = torch.ones(batch, device=device)
        return BlockRecord(ones, ones.double() * static, static, shape)
    sizes = branch.sizes(shape[-2], shape[-1])
    fixed = branch.shortcut_macs(sizes[-1]) + sum(m.macs(shape) for m in maskers)
    if d.spatial is not None:
        computed = spatial_skipping.macs(branch, unit_masks)
    elif d.channel is not None:
        computed = channel_skipping.macs(branch, sizes, channel_mask, d.layer)
    else:
        computed = layer_skipping.macs(branch, sizes, d.layer)
    rate = activation_rate(d, batch, device)
    return BlockRecord(rate, fixed + computed * torch.ones_like(rate, dtype=torch.float64), static, shape,
                       d.kept_patches)
