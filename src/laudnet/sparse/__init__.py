"""Sparse execution kernels: they skip work given decisions and know nothing about gates."""

from .channels import expand_groups, samples_by_channels
from .patches import (PatchIndex, Window, gather_windows, scatter_add_patches, upsample_mask,
                      window_chain, window_validity)

__all__ = ["PatchIndex", "Window", "expand_groups", "gather_windows", "samples_by_channels",
           "scatter_add_patches", "upsample_mask", "window_chain", "window_validity"]
