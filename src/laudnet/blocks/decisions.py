"""What a block's gates decide for a batch, and fixed random decisions that replace them.

A :class:`Decision` holds the 0/1 decisions of a block's gates (straight-through values
while training). :class:`FixedDecisions` draws them at a fixed activation rate instead, so
that benchmarks, predictor validation and the masked/sparse equivalence tests see
reproducible decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import checks

if TYPE_CHECKING:  # for annotations only: the block module uses this one
    from .base import DynamicBlock


@dataclass
class Decision:
    """Decisions of one block for a batch, 0/1 (straight-through values while training).

    ``spatial`` is ``(B, rows, cols)``, ``channel`` and ``channel_scale`` ``(B, groups)``,
    ``layer`` and ``layer_scale`` ``(B,)``. Absent gates are ``None``.
    """

    spatial: Tensor | None = None
    channel: Tensor | None = None
    channel_scale: Tensor | None = None
    layer: Tensor | None = None
    layer_scale: Tensor | None = None

    @property
    def kept_patches(self) -> Tensor | None:
        """The spatial decisions with the layer gate folded in, ``(B, rows, cols)``: the
        patches the block computes (``None`` without a spatial gate)."""
        if self.spatial is None or self.layer is None:
            return self.spatial
        return self.spatial * self.layer[:, None, None]

    def detach(self) -> "Decision":
        """A copy cut from the autograd graph, for inspection after the forward pass."""
        return Decision(**{k: None if v is None else v.detach() for k, v in self.__dict__.items()})


class FixedDecisions:
    """Random decisions of a fixed activation rate, reproducible from a seed.

    ``rate`` is the block's activation rate; in ``layer+X`` blocks each gate gets
    ``sqrt(rate)`` (:meth:`StageConfig.gate_rates`). Per sample, exactly ``round(r × n)`` of
    the n patches or channel groups are on; a layer gate is on with probability ``r``. The
    same seed and batch shape always give the same decisions, so masked and sparse runs see
    identical decisions. Subclasses change how decisions are drawn by overriding :meth:`make`.
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        self.rate = checks.rate("activation rate", rate)
        self.seed = int(seed)
        self._cache: dict[tuple, Decision] = {}

    @staticmethod
    def exact(rate: float, batch: int, units: int, generator: torch.Generator) -> Tensor:
        """``(batch, units)`` 0/1, exactly ``round(rate × units)`` ones per row, at random."""
        keep = int(rate * units + 0.5)
        order = torch.rand(batch, units, generator=generator).argsort(dim=1)
        return torch.zeros(batch, units).scatter_(1, order[:, :keep], 1.0)

    def decide(self, block: DynamicBlock, x: Tensor) -> Decision:
        """The decisions of ``block`` for ``x``, drawn once per batch shape."""
        key = (x.shape[0], x.shape[-2], x.shape[-1], x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = self.make(block, x)
        return self._cache[key]

    def make(self, block: DynamicBlock, x: Tensor) -> Decision:
        """Draw the decisions of ``block`` for a batch shaped like ``x`` from the seed."""
        generator = torch.Generator().manual_seed(self.seed)
        batch = x.shape[0]
        decision = Decision()
        layer_rate, inner_rate = block.config.gate_rates(self.rate)
        if block.layer_masker is not None:
            decision.layer = (torch.rand(batch, generator=generator) < layer_rate).float()
        if block.spatial_masker is not None:
            rows, cols = block.spatial_masker.grid(x.shape[-2], x.shape[-1])
            decision.spatial = self.exact(inner_rate, batch, rows * cols, generator).view(batch, rows, cols)
        if block.channel_masker is not None:
            decision.channel = self.exact(inner_rate, batch, block.channel_masker.outputs, generator)
        return Decision(**{k: None if v is None else v.to(x.device, x.dtype)
                           for k, v in decision.__dict__.items()})
