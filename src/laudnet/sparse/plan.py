"""Execution plans: the operators sparse execution runs for a block, in expectation.

A plan is what the latency predictor prices: it lists every operator with its shape, MACs
and memory traffic, for a given input shape, batch and activation rate, assuming the
decisions are random at that rate (exactly ``round(r·n)`` of n patches or channel groups
per sample, as ``set_decisions`` makes them; layer gates on with probability r).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

FLOAT_BYTES = 4

OP_KINDS = ("conv", "gemm", "gather", "elementwise", "epilogue", "slice", "masker", "index")
"""``conv``: a direct convolution over whole maps; ``gemm``: a convolution as a (batched)
GEMM on gathered pixel rows; ``gather``: copying rows (receptive-field taps) out of a map;
``elementwise``: an activation over rows; ``epilogue``: residual add and activation over
the output; ``slice``: copying the active channels' weights; ``masker``: a gate (pooling
and a small layer); ``index``: a small operator computing masks or indices (costs mostly
its dispatch)."""

INDEX_OPS_PER_SPARSE_UNIT = 10
"""Small mask/index operators sparse spatial execution runs per unit computed at a subset
of pixels (receptive mask, nonzero, tap lookup, compact index, clamping)."""


@dataclass(frozen=True)
class Op:
    """One operator of a plan, repeated ``count`` times.

    ``shape`` depends on the kind: ``conv`` ``(batch, c_in, c_out, kernel, stride, groups,
    h_out, w_out)``; ``gemm`` ``(m, k, n, groups)``; ``gather`` ``(rows, taps, channels)``:
    ``taps`` input rows of ``channels`` gathered for each of ``rows`` output pixels;
    ``elementwise`` ``(rows, channels)``; ``epilogue`` ``(pixels, channels, active)``: the
    output map's pixel rows and channels and the rows the branch adds to; others ``()``.
    ``macs`` and ``bytes`` are per repetition; ``bytes`` counts reads and writes.
    """

    kind: str
    name: str
    macs: float = 0.0
    bytes: float = 0.0
    shape: tuple = ()
    count: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"op kind {self.kind!r} is unknown; allowed: {', '.join(OP_KINDS)}")


def conv_op(name: str, batch: float, c_in: int, c_out: int, kernel: int, stride: int, groups: int,
            out_h: int, out_w: int, in_h: int, in_w: int, count: float = 1.0) -> Op:
    """A direct convolution over whole maps."""
    macs = batch * out_h * out_w * c_out * kernel * kernel * c_in / groups
    traffic = (batch * (in_h * in_w * c_in + out_h * out_w * c_out) + c_out * c_in / groups * kernel ** 2)
    return Op("conv", name, macs, traffic * FLOAT_BYTES, (batch, c_in, c_out, kernel, stride, groups, out_h, out_w),
              count)


def gemm_op(name: str, rows: float, k: int, n: int, groups: int = 1, count: float = 1.0) -> Op:
    """``rows × k`` by ``k × n`` per group (``k`` and ``n`` per group)."""
    traffic = groups * (rows * k + k * n + rows * n)
    return Op("gemm", name, groups * rows * k * n, traffic * FLOAT_BYTES, (rows, k, n, groups), count)


def memory_op(kind: str, name: str, elements: float, count: float = 1.0, shape: tuple = ()) -> Op:
    """An operator that reads and writes ``elements`` floats each."""
    return Op(kind, name, 0.0, 2 * elements * FLOAT_BYTES, shape, count)


def hit_probability(covering: int, units: int, rate: float) -> float:
    """Probability that at least one of ``covering`` given units is among the
    ``round(rate·units)`` active ones drawn uniformly."""
    keep = int(rate * units + 0.5)
    if covering <= 0 or keep <= 0:
        return 0.0
    if units - covering < keep:
        return 1.0
    return 1.0 - math.comb(units - covering, keep) / math.comb(units, keep)


def axis_coverage(out_length: int, patch: int, convs: list[tuple[int, int, int]], length: int) -> list[int]:
    """How many patches of an output axis need each of the ``length`` positions of an
    earlier map. ``convs`` are the ``(kernel, stride, padding)`` of the convolutions between
    that map and the output, in execution order."""
    counts = [0] * length
    for first in range(0, out_length, patch):
        low, high = first, min(first + patch, out_length) - 1
        for kernel, stride, padding in reversed(convs):
            low, high = low * stride - padding, high * stride - padding + kernel - 1
        for position in range(max(low, 0), min(high, length - 1) + 1):
            counts[position] += 1
    return counts


def expected_needed(cover_rows: list[int], cover_cols: list[int], patches: int, rate: float) -> float:
    """Expected number of pixels of a map that some active patch needs, per sample, from the
    per-axis patch coverage counts (a pixel is covered by ``rows × cols`` patches)."""
    total = 0.0
    for (q_row, n_row), (q_col, n_col) in itertools.product(Counter(cover_rows).items(),
                                                            Counter(cover_cols).items()):
        total += n_row * n_col * hit_probability(q_row * q_col, patches, rate)
    return total
