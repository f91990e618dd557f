"""Layer skipping: run a block's branch only for the samples whose gate is on.

:func:`run` executes, :func:`plan` lists the operators in expectation, :func:`macs` counts
what was executed.
"""

from __future__ import annotations

from torch import Tensor

from ..sparse.plan import Op
from .branch import Branch


def run(branch: Branch, x: Tensor, identity: Tensor, gate: Tensor, layer_scale: Tensor | None = None) -> Tensor:
    """``act(identity + g · branch(x))`` on channels-last ``x`` for the ``(B,)`` 0/1 gate
    ``g`` (times ``layer_scale`` if given): the branch runs on the samples whose gate is on."""
    samples = (gate > 0).nonzero().squeeze(1)
    if samples.numel() == 0:
        return branch.add_samples(x, identity, [])
    if samples.numel() == x.shape[0] and layer_scale is None:
        return branch.dense(x, identity, branch.packed())
    h = branch.samples(x, samples, branch.packed())
    if layer_scale is not None:
        h = (h.view(samples.numel(), -1) * layer_scale[samples, None]).view_as(h)
    return branch.add_samples(x, identity, [(samples, h)])


def plan(branch: Branch, batch: int, sizes: list[tuple[int, int]], input_shape: tuple[int, int, int],
         rate: float) -> list[Op]:
    """Operators :func:`run` runs on a batch when each gate is on with probability ``rate``,
    in expectation: at batch 1 the branch runs or not (expected costs), at larger batches
    on ``rate`` of the samples."""
    if batch == 1:
        on = branch.plan_dense(1, sizes)
        off = branch.plan_epilogue(1, sizes, 0.0)
        return ([Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * rate) for o in on]
                + [Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * (1 - rate)) for o in off])
    running = batch * rate
    every = [None] * len(branch.units)
    return (branch.plan_pick_samples(running, input_shape) + branch.plan_units(running, sizes, every)
            + branch.plan_epilogue(batch, sizes, running * sizes[-1][0] * sizes[-1][1], per_sample=True))


def macs(branch: Branch, sizes: list[tuple[int, int]], gate: Tensor | None) -> int | Tensor:
    """Per-sample MACs of the branch for the ``(B,)`` 0/1 ``gate``: the whole branch where it
    is on, nothing where it is off (``None``: on for every sample)."""
    every = branch.macs(sizes)
    return every if gate is None else every * gate.double()
