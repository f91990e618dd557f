"""Sparse execution kernels: they skip work given decisions and know nothing about gates."""

from .channels import expand_groups, samples_by_channels
from .packed import PackedConv, pack_key
from .pixels import (compact_index, from_rows, gather_taps, neighbor_table, pixel_rows, receptive_mask,
                     upsample_mask)

__all__ = ["PackedConv", "compact_index", "expand_groups", "from_rows", "gather_taps", "neighbor_table",
           "pack_key", "pixel_rows", "receptive_mask", "samples_by_channels", "upsample_mask"]
