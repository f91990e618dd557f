"""Model-wide control of dynamic networks and their statistics.

``set_execution`` picks how blocks compute, ``set_decisions`` / ``clear_decisions`` override
the gates with fixed random decisions (benchmarks, predictor validation), ``stats`` reports
what the last forward pass did: activation rates and the FLOPs the sparse path executes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Mapping

from torch import Tensor, nn

from . import checks
from .blocks.base import EXECUTION_MODES, DynamicBlock
from .blocks.decisions import FixedDecisions
from .blocks.records import BlockRecord
from .flops import static_macs
from .gates import Masker
from .models.base import DynamicNetwork

_STATIC_MACS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()
"""Static MACs per model and input shape, computed once (a static pass costs a forward
pass); held here, not on the user's model, and dropped with the model."""


def dynamic_blocks(model: nn.Module) -> list[tuple[str, DynamicBlock]]:
    """``(name, block)`` of every dynamic block of ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DynamicBlock)]


def _blocks_or_raise(model: nn.Module) -> list[tuple[str, DynamicBlock]]:
    blocks = dynamic_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no dynamic blocks; build one with "
                         "laudnet.create_model or laudnet.convert")
    return blocks


def set_execution(model: nn.Module, mode: str) -> nn.Module:
    """Make every dynamic block compute in ``mode``: ``masked`` (dense × decisions,
    differentiable), ``sparse`` (skips the work; inference only) or ``static`` (no gates)."""
    if mode not in EXECUTION_MODES:
        raise ValueError(f"execution mode {mode!r} is unknown; allowed: {', '.join(EXECUTION_MODES)}")
    for _, block in _blocks_or_raise(model):
        block.execution = mode
    for network in model.modules():
        if isinstance(network, DynamicNetwork):
            network.execution = mode
    return model


def set_decisions(model: nn.Module, rate: float | Mapping[str, float], seed: int = 0) -> nn.Module:
    """Override every gate with fixed random decisions of activation rate ``rate`` (one for
    every block, or a dict naming each block's).

    ``rate`` is each block's activation rate. Per sample, ``round(rate × n)`` of a spatial
    gate's patches or a channel gate's groups are on; a layer gate is on with probability
    ``rate``. In ``layer+X`` blocks each of the two gates gets ``sqrt(rate)``, so that the
    block's rate (their product) is ``rate``. Decisions depend only on ``seed``, the block
    and the input shape.
    """
    seed = checks.integer("seed", seed)
    blocks = _blocks_or_raise(model)
    if isinstance(rate, Mapping):
        rates = list(checks.block_rates(rate, [name for name, _ in blocks]).values())
    else:
        rates = [checks.rate("rate", rate)] * len(blocks)
    for index, ((_, block), block_rate) in enumerate(zip(blocks, rates)):
        block.fixed = FixedDecisions(block_rate, seed * 100_003 + index)
    return model


def clear_decisions(model: nn.Module) -> nn.Module:
    """Return every block to its gates after :func:`set_decisions`."""
    for _, block in _blocks_or_raise(model):
        block.fixed = None
    return model


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the maskers (trained with their own learning rate, no weight decay)."""
    return [p for m in model.modules() if isinstance(m, Masker) for p in m.parameters()]


@dataclass
class BlockStats:
    """Statistics of one block in the last forward pass (per-sample tensors detached)."""

    name: str
    paradigm: str
    granularity: int | None
    rate: Tensor
    macs: Tensor
    static_macs: int

    @property
    def mean_rate(self) -> float:
        return float(self.rate.mean())


@dataclass
class NetworkStats:
    """What the last forward pass of a dynamic network did.

    ``flops`` are MACs per sample (batch mean) that the sparse path executes, maskers and
    halo recomputation included; ``static_flops`` those of the same network without gates.
    """

    blocks: list[BlockStats]
    flops_per_sample: Tensor
    static_flops: int

    @property
    def rates(self) -> dict[str, Tensor]:
        """Per-block activation rate of each sample."""
        return {b.name: b.rate for b in self.blocks}

    @property
    def mean_rates(self) -> dict[str, float]:
        """Per-block activation rate, batch mean."""
        return {b.name: b.mean_rate for b in self.blocks}

    @property
    def flops(self) -> float:
        return float(self.flops_per_sample.mean())

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.static_flops

    def summary(self) -> str:
        """A plain-text table of the blocks and the totals."""
        width = max([16] + [len(b.name) + 1 for b in self.blocks])  # names in a detector are long
        lines = [f"{'block':<{width}}{'paradigm':<15}{'gran':>5}{'rate':>8}{'MMACs':>10}{'static':>10}"]
        for b in self.blocks:
            lines.append(f"{b.name:<{width}}{b.paradigm:<15}{b.granularity or '-':>5}{b.mean_rate:>8.3f}"
                         f"{float(b.macs.mean()) / 1e6:>10.2f}{b.static_macs / 1e6:>10.2f}")
        lines.append(f"total: {self.flops / 1e9:.3f} GMACs of {self.static_flops / 1e9:.3f} static "
                     f"({self.flops_ratio:.1%})")
        return "\n".join(lines)


def dynamic_networks(model: nn.Module) -> list[DynamicNetwork]:
    """The outermost dynamic networks in ``model``: ``model`` itself if it is one, else
    those it holds (the backbone body of a detector)."""
    inside: set[int] = set()
    networks = []
    for m in model.modules():
        if isinstance(m, DynamicNetwork) and id(m) not in inside:
            networks.append(m)
            inside.update(id(sub) for sub in m.modules())
    return networks


def _static_network_macs(network: DynamicNetwork) -> int:
    """Static MACs of ``network`` at the shape of its last input (cached per shape)."""
    if network.input_shape is None:
        raise ValueError("statistics need the network input shape; use a model built by laudnet")
    cache = _STATIC_MACS.setdefault(network, {})
    if network.input_shape not in cache:
        cache[network.input_shape] = static_macs(network, network.input_shape)
    return cache[network.input_shape]


def network_macs(model: nn.Module) -> tuple[Tensor, int, list[tuple[str, BlockRecord]]]:
    """Per-sample MACs of the last forward pass (differentiable in training), static MACs,
    and the block records. The non-block part (stem, head) counts as static.

    Counts cover the dynamic networks in ``model`` (:func:`dynamic_networks`), each at
    the shape of its last input: for a detector, its backbone body on the batch of padded
    images the transform made; the detector's FPN and heads are not counted."""
    blocks = _blocks_or_raise(model)
    records = [(name, block.last) for name, block in blocks]
    if any(record is None for _, record in records):
        raise RuntimeError("run a forward pass before asking for statistics")
    networks = dynamic_networks(model)
    if not networks:
        raise ValueError("statistics need the network input shape; use a model built by laudnet")
    static = sum(_static_network_macs(network) for network in networks)
    dynamic = static - sum(r.static_macs for _, r in records) + sum(r.macs for _, r in records)
    return dynamic, static, records


def stats(model: nn.Module) -> NetworkStats:
    """Statistics of the last forward pass of ``model`` (see :class:`NetworkStats`)."""
    dynamic, static, records = network_macs(model)
    blocks = [BlockStats(name, b.config.paradigm, b.config.granularity, r.rate.detach(), r.macs.detach(),
                         r.static_macs) for (name, r), (_, b) in zip(records, dynamic_blocks(model))]
    return NetworkStats(blocks, dynamic.detach(), static)

