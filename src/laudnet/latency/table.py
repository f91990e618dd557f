"""Block latency as a function of the activation rate, for search and for training.

:class:`BlockPricer` prices dynamic blocks with the predictor (their execution plans priced
by the cost model of a hardware profile) and caches the price per block shape, design and
rate: the blocks of a stage share their shapes, so a ResNet-101 has few distinct ones.

:class:`LatencyTable` holds, for every gated block of one network, its predicted latency
at a few activation rates. Interpolated linearly between them, the network's predicted
latency becomes a piecewise-linear, differentiable function of the blocks' activation
rates: the latency budget of training (:func:`laudnet.train.losses.latency_budget_loss`).
:func:`latency_table` builds it once per model, device, batch size and input size.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..blocks.base import DynamicBlock
from ..dynamic import dynamic_blocks
from .hardware import Hardware, load_hardware
from .predictor import predict_walk, price_block, walk_network

TABLE_POINTS = 9
"""Activation rates of a latency table: 0, 1/8, …, 1."""

_TABLES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, "LatencyTable"]] = weakref.WeakKeyDictionary()
"""The latency tables built for each model, by device, batch size, input size and points."""


def block_signature(block: DynamicBlock) -> tuple:
    """What a block's plan depends on besides its input shape, the batch and the rate: its
    type, gate configuration, output activation, input reuse and the geometry of its
    convolutions and linear layers (branch, shortcut, squeeze-excitation, maskers)."""
    layers = []
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            layers.append((module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups))
        elif isinstance(module, nn.Linear):
            layers.append((module.in_features, module.out_features))
    return type(block).__name__, block.config, block.reuse_input, block.out_act is None, tuple(layers)


class BlockPricer:
    """Predicted latency and expected MACs of dynamic blocks on one device at one batch size,
    cached by block signature, input shape and rate."""

    def __init__(self, hardware: str | Hardware, batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
        self.hardware = load_hardware(hardware)
        self.batch_size = batch_size
        self._cache: dict[tuple, tuple[float, float]] = {}

    def __call__(self, block: DynamicBlock, input_shape: tuple[int, int, int], rate: float) -> tuple[float, float]:
        """``(milliseconds per batch, MACs per sample)`` of ``block`` with every gate at ``rate``."""
        key = (block_signature(block), tuple(input_shape), float(rate))
        if key not in self._cache:
            cost, ops = price_block(block, input_shape, self.hardware, self.batch_size, rate)
            self._cache[key] = (cost.total_ms, sum(op.macs * op.count for op in ops) / self.batch_size)
        return self._cache[key]


def plan_rate(block: DynamicBlock, rate: float) -> float:
    """The rate to plan a block at for a block activation rate ``rate``. A ``layer+X`` block's
    rate is the product of its two gates' rates; the table assumes both equally open."""
    combined = block.config.layer and (block.config.spatial or block.config.channel)
    return math.sqrt(rate) if combined else rate


def _interpolate(block_ms: Tensor, rates: Tensor) -> Tensor:
    """``block_ms[i]`` (a block's latency at evenly spaced rates from 0 to 1) interpolated
    linearly at ``rates[i, j]``, for every block ``i``; differentiable in ``rates``."""
    steps = block_ms.shape[1] - 1
    position = rates.clamp(0.0, 1.0) * steps
    low = position.detach().floor().clamp(max=steps - 1).long()
    fraction = position - low
    below = block_ms.gather(1, low)
    above = block_ms.gather(1, low + 1)
    return below + fraction * (above - below)


@dataclass
class LatencyTable:
    """Predicted latency of one batch of a network, per gated block at ``rates``.

    ``block_ms[i, k]`` is block ``names[i]`` at activation rate ``rates[k]``; ``fixed_ms`` the
    rest of the network (stem, head, static blocks); ``static_ms`` the network without gates.
    """

    names: list[str]
    rates: Tensor
    block_ms: Tensor
    fixed_ms: float
    static_ms: float
    hardware: str
    batch_size: int
    input_size: int

    def predict(self, rates: Tensor) -> Tensor:
        """Predicted milliseconds for the blocks' activation rates (one per name, in [0, 1]),
        interpolated linearly between the table's rates: differentiable in ``rates``."""
        if rates.shape != (len(self.names),):
            raise ValueError(f"expected {len(self.names)} activation rates, one per gated block, "
                             f"got shape {tuple(rates.shape)}")
        rates = rates.to(torch.promote_types(rates.dtype, torch.float32))  # not in bfloat16
        table = self.block_ms.to(rates.device, rates.dtype)
        return self.fixed_ms + _interpolate(table, rates[:, None]).squeeze(1).sum()

    def uniform_ms(self, rate: float) -> float:
        """Predicted milliseconds with every gated block at activation ``rate``."""
        return float(self.predict(torch.full((len(self.names),), float(rate), dtype=torch.float64)))

    def rate_for(self, budget_ms: float, resolution: int = 1000) -> float:
        """The largest common activation rate (on a grid of ``resolution`` steps) whose
        predicted latency is within ``budget_ms``; raises if even rate 0 exceeds it."""
        grid = torch.linspace(0.0, 1.0, resolution + 1, dtype=torch.float64)
        rates = grid.expand(len(self.names), -1)
        totals = self.fixed_ms + _interpolate(self.block_ms.double(), rates).sum(dim=0)
        within = (totals <= budget_ms).nonzero()
        if len(within) == 0:
            raise ValueError(f"latency budget {budget_ms:g} ms is below the {float(totals[0]):.4g} ms predicted on "
                             f"{self.hardware} (batch {self.batch_size}) with every gate closed; allowed: more "
                             f"than {float(totals[0]):.4g} ms (the static network: {self.static_ms:.4g} ms)")
        return float(grid[int(within[-1])])

    def network_ms(self, model: nn.Module) -> Tensor:
        """Predicted milliseconds at the batch-mean activation rates of the last forward pass
        of ``model`` (differentiable through the decisions of a masked training pass)."""
        blocks = dict(dynamic_blocks(model))
        records = [blocks[name].last for name in self.names]
        if any(record is None for record in records):
            raise RuntimeError("run a forward pass before asking for the predicted latency")
        return self.predict(torch.stack([record.rate.mean() for record in records]))


def latency_table(model: nn.Module, hardware: str | Hardware, batch_size: int = 1, input_size: int | None = None,
                  points: int = TABLE_POINTS) -> LatencyTable:
    """The latency table of ``model`` (a laudnet dynamic network) on ``hardware`` for batches
    of ``batch_size`` ``input_size × input_size`` images (default: the size of the model's
    last input), at ``points`` evenly spaced rates. Built once per model and cached while it lives."""
    hw = load_hardware(hardware)
    if input_size is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError("give input_size, or run a forward pass first so that the model knows its input size")
        if shape[-1] != shape[-2]:
            raise ValueError(f"latency tables need square inputs, got {shape[-2]}x{shape[-1]}")
        input_size = int(shape[-1])
    if points < 2:
        raise ValueError(f"a latency table needs at least 2 rates, got {points}")
    key = (hw.name, str(hw.path), batch_size, input_size, points)
    cache = _TABLES.setdefault(model, {})
    if key not in cache:
        cache[key] = _build_table(model, hw, batch_size, input_size, points)
    return cache[key]


def _build_table(model: nn.Module, hw: Hardware, batch_size: int, input_size: int, points: int) -> LatencyTable:
    pricer = BlockPricer(hw, batch_size)
    walk = walk_network(model, input_size)
    gated = [s for s in walk.blocks if s.block.config.paradigm != "none"]
    if not gated:
        raise ValueError(f"{type(model).__name__} has no gated blocks: nothing for a latency budget to control")
    rates = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    block_ms = torch.tensor([[pricer(s.block, s.input_shape, plan_rate(s.block, float(r)))[0] for r in rates]
                             for s in gated], dtype=torch.float64)
    report = predict_walk(walk, hw, batch_size)
    names = {s.name for s in gated}
    fixed = sum(part.total_ms for part in report.blocks if part.name not in names)
    static = predict_walk(walk, hw, batch_size, execution="static").total_ms
    return LatencyTable([s.name for s in gated], rates, block_ms, fixed, static, hw.name, batch_size, input_size)
