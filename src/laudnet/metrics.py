"""What evaluation counts: accuracy, FLOPs, activation rates and where the spatial masks fall,
summed over samples (:class:`Totals`) so that ranks and batches add up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from .blocks.base import DynamicBlock
from .distributed import Context, all_reduce_sum
from .dynamic import NetworkStats, dynamic_blocks, stats
from .progress import progress_bar


@dataclass
class Totals:
    """Sums over evaluated samples; the figures are ratios of them, so ranks add up."""

    samples: float = 0.0
    correct: float = 0.0
    flops: float = 0.0
    static: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    macs: dict[str, float] = field(default_factory=dict)
    overlap: dict[str, list[float]] = field(default_factory=dict)
    """Per spatial block: kept patches on an object, kept patches, patches on an object,
    patches (see :func:`patch_overlap`)."""

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.samples, 1)

    @property
    def static_flops(self) -> float:
        """Static MACs per sample (a detector's padded batches differ in size)."""
        return self.static / max(self.samples, 1)

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.static if self.static else math.nan

    @property
    def mean_rates(self) -> dict[str, float]:
        return {name: total / max(self.samples, 1) for name, total in self.rates.items()}

    def _overlap(self, name: str | None) -> list[float]:
        """The overlap counts of block ``name``, or summed over the blocks."""
        if name is not None:
            return self.overlap.get(name, [0.0] * 4)
        return [sum(counts[i] for counts in self.overlap.values()) for i in range(4)]

    def object_share(self, name: str | None = None) -> float | None:
        """Share of the kept patches (of block ``name``, default every spatial block) that
        overlap an object box; ``None`` where nothing was kept or counted."""
        on, kept, _, _ = self._overlap(name)
        return on / kept if kept else None

    def chance_share(self, name: str | None = None) -> float | None:
        """Share of all patches (of block ``name``, default every spatial block) that overlap
        an object box: what masks that ignore the image would give."""
        _, _, on, patches = self._overlap(name)
        return on / patches if patches else None

    def reduce(self, context: Context) -> "Totals":
        """The totals summed over the ranks."""
        if not context.distributed:
            return self
        names, spatial = list(self.rates), list(self.overlap)
        values = torch.tensor([self.samples, self.correct, self.flops, self.static] + [self.rates[n] for n in names]
                              + [self.macs[n] for n in names] + [c for n in spatial for c in self.overlap[n]],
                              dtype=torch.float64)
        values = all_reduce_sum(values.to(context.device), context).cpu().tolist()
        k = len(names)
        counts = values[4 + 2 * k:]
        return Totals(*values[:4], dict(zip(names, values[4:4 + k])), dict(zip(names, values[4 + k:4 + 2 * k])),
                      {n: counts[4 * i:4 * i + 4] for i, n in enumerate(spatial)})

    def add(self, network: NetworkStats, overlap: dict[str, list[float]] | None = None) -> None:
        """Add one forward pass: its statistics and, if given, its :func:`patch_overlap` counts."""
        batch = len(network.flops_per_sample)
        self.samples += batch
        self.flops += float(network.flops_per_sample.sum())
        self.static += float(network.static_flops) * batch
        for b in network.blocks:
            self.rates[b.name] = self.rates.get(b.name, 0.0) + float(b.rate.sum())
            self.macs[b.name] = self.macs.get(b.name, 0.0) + float(b.macs.sum())
        for name, counts in (overlap or {}).items():
            self.overlap[name] = [a + b for a, b in zip(self.overlap.get(name, [0.0] * 4), counts)]


def patch_overlap(model: nn.Module, on_object: Callable[[DynamicBlock, int, int], Tensor]
                  ) -> dict[str, list[float]]:
    """For the spatial decisions of the last forward pass, per spatial block: kept patches on
    an object, kept patches, patches on an object, patches. ``on_object(block, rows, cols)``
    says which of a block's ``(B, rows, cols)`` patches lie on an object."""
    counts = {}
    for name, block in dynamic_blocks(model):
        decision = block.last_decision
        mask = None if decision is None else decision.kept_patches
        if mask is None:
            continue
        on = on_object(block, *mask.shape[-2:]).to(torch.float64)
        kept = (mask.detach().cpu() > 0).to(torch.float64)
        counts[name] = [float((kept * on).sum()), float(kept.sum()), float(on.sum()), float(on.numel())]
    return counts


def object_overlap(model: nn.Module, boxes: Tensor) -> dict[str, list[float]]:
    """:func:`patch_overlap` for one object box per image, ``(B, 4)`` (top, left, bottom,
    right in input pixels). A patch is on the object when its area in the input image
    (patch side × the block's downsampling) overlaps the box."""
    image_height, image_width = model.input_shape[-2:]
    boxes = boxes.to(torch.float64)

    def on_object(block: DynamicBlock, rows: int, cols: int) -> Tensor:
        stride, side = block.spatial_masker.stride, block.spatial_masker.granularity
        height, width = block.last.input_shape[-2:]
        cell_h = side * image_height / math.ceil(height / stride)
        cell_w = side * image_width / math.ceil(width / stride)
        r = torch.arange(rows, dtype=torch.float64)
        c = torch.arange(cols, dtype=torch.float64)
        row_hit = (r * cell_h < boxes[:, 2:3]) & ((r + 1) * cell_h > boxes[:, 0:1])
        col_hit = (c * cell_w < boxes[:, 3:4]) & ((c + 1) * cell_w > boxes[:, 1:2])
        return row_hit[:, :, None] & col_hit[:, None, :]

    return patch_overlap(model, on_object)


@torch.no_grad()
def accumulate(model: nn.Module, loader, device: torch.device | str = "cpu",
               boxes: Tensor | None = None, progress: bool = False) -> Totals:
    """Run ``model`` in eval mode (its current execution) over ``loader`` and sum what the
    figures need. ``boxes`` ``(N, 4)``, aligned with the loader's order, enables the
    object-overlap counts; ``progress`` shows a progress bar."""
    model.eval()
    totals = Totals()
    seen = 0
    loader = progress_bar(loader, "evaluating", progress)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        batch = labels.shape[0]
        totals.correct += float((logits.argmax(1) == labels).sum())
        totals.add(stats(model), None if boxes is None else object_overlap(model, boxes[seen:seen + batch]))
        seen += batch
    return totals
