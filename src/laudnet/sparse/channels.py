"""Channel sparse kernels: map group decisions to channels and group samples that share them."""

from __future__ import annotations

import torch
from torch import Tensor


def expand_groups(mask: Tensor, group_size: int, channels: int) -> Tensor:
    """``(B, groups)`` decisions → ``(B, channels)``; the last group may be partial."""
    return mask.repeat_interleave(group_size, dim=1)[:, :channels]


def samples_by_channels(channel_mask: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Group samples whose ``(B, C)`` channel masks are equal.

    Returns ``(sample_indices, active_channel_indices)`` pairs, one per distinct mask, so
    the sliced convolutions of a group run once on all its samples.
    """
    if channel_mask.shape[0] == 1:
        return [(torch.zeros(1, dtype=torch.long, device=channel_mask.device),
                 (channel_mask[0] > 0).nonzero(as_tuple=True)[0])]
    unique, inverse = torch.unique(channel_mask > 0, dim=0, return_inverse=True)
    return [((inverse == i).nonzero(as_tuple=True)[0], row.nonzero(as_tuple=True)[0])
            for i, row in enumerate(unique)]
