"""Channel skipping: compute only the active channel groups between a block's units.

The weights are sliced to the active channels (the inputs of every unit but the first, the
outputs of every unit but the last). Samples that share a channel mask run together; samples
with different masks run one by one, or together on the union of their channels with each
sample's own mask applied, whichever :func:`union_is_cheaper` says costs less.
:func:`run` executes, :func:`plan` lists the operators in expectation, :func:`macs` counts
what was executed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..flops import conv_macs
from ..sparse.channels import samples_by_channels
from ..sparse.plan import Op, memory_op
from .branch import Branch, se_macs

CHANNEL_RUN_PIXELS = 100
"""Fixed cost of one run of channel-sliced units, per active channel, in output pixels of
compute (slicing the packed weights, launching the run's kernels); measured on ResNet-50
blocks on a 2-core x86 CPU. Samples with different channel masks run one by one while that
is cheaper than one run on the union of their channels with the rest masked out."""


def union_is_cheaper(samples: list[int], channels: list[int], union: int, pixels: int) -> bool:
    """Whether one run of all samples on the ``union`` of their active channels costs less
    than one run per distinct channel mask (``samples[i]`` samples on ``channels[i]``
    channels), each run on ``pixels`` output pixels per sample."""
    separate = sum(n * pixels * c + CHANNEL_RUN_PIXELS * c for n, c in zip(samples, channels))
    return sum(samples) * pixels * union + CHANNEL_RUN_PIXELS * union < separate


def channel_runs(mask: Tensor, pixels: int) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
    """How the samples of the ``(N, C)`` channel ``mask`` run: one run per distinct mask
    (:func:`samples_by_channels`), or, where :func:`union_is_cheaper`, one run of all on
    the union of their channels, with its ``(N, |union|)`` mask to apply."""
    runs = samples_by_channels(mask)
    if len(runs) > 1:
        union = (mask > 0).any(dim=0).nonzero(as_tuple=True)[0]
        if union_is_cheaper([s.numel() for s, _ in runs], [c.numel() for _, c in runs], union.numel(), pixels):
            return [(torch.arange(mask.shape[0], device=mask.device), union)], mask[:, union]
    return runs, None


def run(branch: Branch, x: Tensor, identity: Tensor, mask: Tensor, scale: Tensor | None, running: Tensor,
        layer_scale: Tensor | None = None) -> Tensor:
    """``act(identity + branch(x))`` on channels-last ``x`` with the inner channels
    restricted per sample by the ``(B, C_inner)`` 0/1 ``mask`` (``scale``, if given,
    multiplies the last inner unit's outputs), for the ``running`` samples only (the
    others get ``act(identity)``); ``layer_scale`` ``(B,)`` multiplies each sample's branch."""
    packed = branch.packed()
    last = len(packed) - 1
    inner = mask.shape[1]
    pixels = identity.shape[-2] * identity.shape[-1]
    parts = []
    runs, union_mask = channel_runs(mask[running], pixels)
    for members, channels in runs:
        samples = running[members]
        if channels.numel() == 0:
            h = branch.zero_response().expand(samples.numel() * pixels, -1)
        else:
            every = channels.numel() == inner
            convs = packed if every else [conv.sliced(channels if i > 0 else None, channels if i < last else None)
                                          for i, conv in enumerate(packed)]
            scale_unit = None if scale is None else (last - 1, scale[samples][:, channels])
            if samples.numel() == x.shape[0] and layer_scale is None:  # one run of every sample
                return branch.dense(x, identity, convs, scale_unit=scale_unit,
                                    channels=None if every else channels, unit_mask=union_mask)
            h = branch.samples(x, samples, convs, scale_unit, None if every else channels, union_mask)
        if layer_scale is not None:
            h = (h.reshape(samples.numel(), -1) * layer_scale[samples, None]).view(-1, h.shape[1])
        parts.append((samples, h))
    return branch.add_samples(x, identity, parts)


def plan(branch: Branch, batch: int, sizes: list[tuple[int, int]], groups: int, granularity: int,
         inner_channels: int, rate: float, layer_rate: float = 1.0) -> list[Op]:
    """Operators :func:`run` runs on a batch when ``rate`` of the ``groups`` channel groups
    are active at random (and the branch runs for ``layer_rate`` of the samples), in
    expectation."""
    keep = int(rate * groups + 0.5)
    channels = min(keep * granularity, inner_channels)
    running = batch * layer_rate
    if channels == 0 or running == 0:  # nothing runs (a zero-input response is not planned)
        return branch.plan_epilogue(batch, sizes, 0.0)
    separate = keep < groups and batch > 1  # distinct masks: every running sample is its own run
    if separate:  # random masks: the expected union of the running samples' groups
        union_groups = groups * (1 - (1 - keep / groups) ** running)
        union = min(round(union_groups) * granularity, inner_channels)
        samples = max(1, round(running))
        if union_is_cheaper([1] * samples, [channels] * samples, union, sizes[-1][0] * sizes[-1][1]):
            separate, keep, channels = False, round(union_groups), union
    runs, per_run = (running, 1.0) if separate else (1.0, running)
    fraction = channels / inner_channels
    units = branch.units
    copied = 0.0  # elements copied by PackedConv.sliced: output rows first, then input columns
    for i, unit in enumerate(units):
        sliced_in, sliced_out = i > 0, i < len(units) - 1
        share = (fraction if sliced_out else 0.0) + (fraction ** (2 if sliced_out else 1) if sliced_in else 0.0)
        copied += unit.conv.weight.numel() * share
    ops = [memory_op("slice", "weights", copied, count=runs)] if keep < groups else []
    if per_run < batch:
        ops += [Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * runs)
                for o in branch.plan_pick_samples(per_run, (units[0].conv.in_channels, *sizes[0]))]
    ops += [Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * runs)
            for o in branch.plan_units(per_run, sizes, [None] * len(units), channels if keep < groups else None)]
    if running >= batch and not separate:
        return ops + branch.plan_epilogue(batch, sizes)
    return ops + branch.plan_epilogue(batch, sizes, running * sizes[-1][0] * sizes[-1][1], per_sample=True)


def macs(branch: Branch, sizes: list[tuple[int, int]], mask: Tensor, gate: Tensor | None) -> Tensor:
    """Per-sample MACs (float64 ``(B,)``) of the branch with the inner channels of the
    ``(B, C_inner)`` 0/1 ``mask``, for the samples whose layer ``gate`` is on (``None``: all).

    A mask without gradient counts the channels :func:`run` computes: where the running
    samples run together on the union of their channels (:func:`channel_runs`), each counts
    the union. A straight-through mask that carries a gradient (training) counts each
    sample's own channels, so that the count stays differentiable for the budget loss."""
    active = mask.sum(dim=1, dtype=torch.float64)
    if not (mask.requires_grad and torch.is_grad_enabled()):
        running = mask if gate is None else mask[gate > 0]
        union = channel_runs(running, sizes[-1][0] * sizes[-1][1])[1]
        if union is not None:  # every sample ran on the union of the channels
            active = torch.full_like(active, union.shape[1])
    units = branch.units
    computed = 0.0
    for i, (unit, size) in enumerate(zip(units, sizes[1:])):
        cin = unit.conv.in_channels if i == 0 else active
        cout = active if i < len(units) - 1 else unit.conv.out_channels
        computed = computed + conv_macs(unit.conv, *size, in_channels=cin, out_channels=cout)
        if unit.se is not None:
            computed = computed + se_macs(unit.se, cout)
    return computed if gate is None else computed * gate.double()
