"""Dynamic residual blocks: one semantics, two execution modes.

A residual block computes ``out = act(identity + branch(x))``; its branch is a chain of
*units* (convolution → norm → optional activation). A dynamic block gates the branch:

- spatial: ``out = act(identity + up(M) * branch(x))`` with ``M`` a coarse mask of S×S
  output patches;
- channel: the outputs of the inner units (all but the last), after norm and activation,
  are multiplied by the channel mask; the learned scale, if any, multiplies the last
  inner output. A sample with every group off still gets the last unit's response to
  zeros (its norm shift), exactly as the dense computation gives;
- layer: ``out = act(identity + g * branch(x))``, ``g`` times the learned scale if any;
- ``layer+spatial`` / ``layer+channel``: the layer gate multiplies the gated branch.

``masked`` execution computes the dense branch and multiplies (differentiable, for
training). ``sparse`` execution skips the work (inference only). Feature maps are
channels-last pixel rows (:mod:`laudnet.sparse.pixels`), batch norms are folded into the
convolutions, and every unit is a GEMM on gathered rows:

- spatial: each unit is computed only at the pixels the next unit needs (the active output
  pixels, dilated by the receptive fields of the later units: the halo is computed once,
  not per patch); the result is added to the identity at the active pixels only;
- channel: the weights are sliced to the active channel groups (samples that share a
  channel mask run together);
- layer: the branch runs only for the samples whose gate is on.

A unit whose needed pixels cover most of its map (``DENSE_FRACTION``) computes all of them:
gathering would cost more than the extra pixels. ``static`` runs the original block
without gates. Subclasses only declare their units, their shortcut and their output
activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import StageConfig
from ..flops import conv_macs, conv_output_size
from ..gates import ChannelMasker, LayerMasker, Masker, SpatialMasker, decide
from ..sparse import expand_groups, samples_by_channels
from ..sparse.packed import PackedConv, pack_key
from ..sparse.plan import (INDEX_OPS_PER_SPARSE_UNIT, Op, axis_coverage, conv_op, expected_needed, gemm_op,
                           memory_op)
from ..sparse.pixels import (compact_index, from_rows, gather_taps, neighbor_table, pixel_rows,
                             receptive_mask, upsample_mask)

EXECUTION_MODES = ("masked", "sparse", "static")

DENSE_FRACTION = 0.85
"""Share of a unit's output pixels above which sparse execution computes all of them."""


@dataclass
class Unit:
    """One step of a residual branch: ``act(norm(conv(x)))``."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    act: Callable[[Tensor], Tensor] | None


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


@dataclass
class BlockRecord:
    """What the last forward pass of a block did, per sample.

    ``rate`` is the activation rate (share of patches / channel groups / blocks computed),
    ``macs`` the MACs the sparse path executes (maskers, halo and shortcut included),
    ``static_macs`` those of the static block. Both tensors keep their gradient in
    training, which the budget loss uses.
    """

    rate: Tensor
    macs: Tensor
    static_macs: int
    input_shape: tuple[int, ...]


class FixedDecisions:
    """Random decisions of a fixed activation rate, reproducible from a seed.

    Per sample, exactly ``round(rate × n)`` of the n patches or channel groups are on; a
    layer gate is on with probability ``rate``. The same seed and batch shape always give
    the same decisions, so masked and sparse runs see identical decisions.
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"activation rate must be in [0, 1], got {rate}")
        self.rate = float(rate)
        self.seed = int(seed)
        self._cache: dict[tuple, Decision] = {}

    def _exact(self, batch: int, units: int, generator: torch.Generator) -> Tensor:
        keep = int(self.rate * units + 0.5)
        order = torch.rand(batch, units, generator=generator).argsort(dim=1)
        return torch.zeros(batch, units).scatter_(1, order[:, :keep], 1.0)

    def decide(self, block: "DynamicBlock", x: Tensor) -> Decision:
        key = (x.shape[0], x.shape[-2], x.shape[-1], x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = self._make(block, x)
        return self._cache[key]

    def _make(self, block: "DynamicBlock", x: Tensor) -> Decision:
        generator = torch.Generator().manual_seed(self.seed)
        batch = x.shape[0]
        decision = Decision()
        if block.layer_masker is not None:
            decision.layer = (torch.rand(batch, generator=generator) < self.rate).float()
        if block.spatial_masker is not None:
            rows, cols = block.spatial_masker.grid(x.shape[-2], x.shape[-1])
            decision.spatial = self._exact(batch, rows * cols, generator).view(batch, rows, cols)
        if block.channel_masker is not None:
            decision.channel = self._exact(batch, block.channel_masker.outputs, generator)
        return Decision(**{k: None if v is None else v.to(x.device, x.dtype)
                           for k, v in decision.__dict__.items()})


class DynamicBlock(nn.Module):
    """Base of every dynamic residual block.

    Subclasses create their modules with torchvision's names (so state dicts stay
    compatible), then call :meth:`setup_gates`, and implement :meth:`units`. The shortcut
    is ``self.downsample`` (``None`` for identity) and the output activation
    ``self.out_act`` (``None`` for none).
    """

    downsample: nn.Module | None
    out_act: Callable[[Tensor], Tensor] | None = staticmethod(F.relu)

    def setup_gates(self, config: StageConfig, in_channels: int, inner_channels: int,
                    stride: int, gate_scale: bool = False) -> None:
        """Create the maskers that ``config`` asks for."""
        self.config = config
        self.execution = "masked"
        self.fixed: FixedDecisions | None = None
        self._last: BlockRecord | None = None
        self._pending: tuple | None = None
        self.inner_channels = inner_channels
        self._packed_cache: tuple[tuple, list[PackedConv]] | None = None
        self.spatial_masker = (SpatialMasker(in_channels, config.granularity, stride)
                               if config.spatial else None)
        self.channel_masker = (ChannelMasker(in_channels, inner_channels, config.granularity, gate_scale)
                               if config.channel else None)
        self.layer_masker = LayerMasker(in_channels, gate_scale) if config.layer else None

    def units(self) -> list[Unit]:  # pragma: no cover - abstract
        raise NotImplementedError

    def maskers(self) -> list[Masker]:
        return [m for m in (self.layer_masker, self.spatial_masker, self.channel_masker) if m is not None]

    # ----------------------------------------------------------------- decisions
    def decide(self, x: Tensor) -> Decision:
        """Decisions for ``x``: from the fixed override if set, else from the maskers."""
        if self.fixed is not None:
            for masker in self.maskers():  # the gates still run: fixed decisions cost what gates cost
                masker(x)
            return self.fixed.decide(self, x)
        decision = Decision()
        if self.layer_masker is not None:
            logits, scale = self.layer_masker(x)
            decision.layer = decide(logits[:, 0], self.layer_masker.temperature, self.training)
            decision.layer_scale = None if scale is None else scale[:, 0]
        if self.spatial_masker is not None:
            decision.spatial = decide(self.spatial_masker(x), self.spatial_masker.temperature, self.training)
        if self.channel_masker is not None:
            logits, scale = self.channel_masker(x)
            decision.channel = decide(logits, self.channel_masker.temperature, self.training)
            decision.channel_scale = scale
        return decision

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if self.execution == "sparse":
            if self.training:
                raise RuntimeError("sparse execution is for inference: call model.eval() first, "
                                   "or use set_execution(model, 'masked') for training")
            x = x.contiguous(memory_format=torch.channels_last)
        identity = x if self.downsample is None else self.downsample(x)
        if self.execution == "static" or self.config.paradigm == "none":
            self._pending = (x.shape, x.device, None, None)
            return self._finish(identity + self.run_units(x))
        decision = self.decide(x)
        if self.execution == "masked":
            out, unit_masks = self._forward_masked(x, identity, decision), None
        else:
            out, unit_masks = self._forward_sparse(x, identity, decision)
        self._pending = (x.shape, x.device, decision, unit_masks)
        return out

    @property
    def last(self) -> BlockRecord | None:
        """What the last forward pass did (computed when first asked for)."""
        if self._pending is not None:
            self._last, self._pending = self._record(*self._pending), None
        return self._last

    @last.setter
    def last(self, record: BlockRecord | None) -> None:
        self._last, self._pending = record, None

    def _finish(self, out: Tensor) -> Tensor:
        return out if self.out_act is None else self.out_act(out)

    def _channel_factors(self, d: Decision) -> tuple[Tensor, Tensor | None]:
        group = self.channel_masker.granularity
        mask = expand_groups(d.channel, group, self.inner_channels)
        scale = None if d.channel_scale is None else expand_groups(d.channel_scale, group, self.inner_channels)
        return mask, scale

    def run_units(self, h: Tensor, channel: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        """The dense branch; ``channel`` and ``scale`` (``(B, C_inner)``) multiply the
        outputs of the inner units, the scale only the last inner one."""
        units = self.units()
        for i, unit in enumerate(units):
            h = unit.norm(unit.conv(h))
            if unit.act is not None:
                h = unit.act(h)
            if channel is not None and i < len(units) - 1:
                h = h * channel[:, :, None, None]
                if scale is not None and i == len(units) - 2:
                    h = h * scale[:, :, None, None]
        return h

    def _spatial_mask(self, d: Decision, out_size: tuple[int, int]) -> Tensor:
        """Full-resolution ``(B, H_out, W_out)`` mask of the output pixels the branch adds,
        the layer gate folded in."""
        mask = upsample_mask(d.spatial, self.config.granularity, *out_size)
        return mask if d.layer is None else mask * d.layer[:, None, None]

    def _forward_masked(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        channel, scale = self._channel_factors(d) if d.channel is not None else (None, None)
        h = self.run_units(x, channel, scale)
        if d.spatial is not None:
            h = h * upsample_mask(d.spatial, self.config.granularity, h.shape[-2], h.shape[-1]).unsqueeze(1)
        if d.layer is not None:
            gate = d.layer if d.layer_scale is None else d.layer * d.layer_scale
            h = h * gate[:, None, None, None]
        return self._finish(identity + h)

    # ----------------------------------------------------------------- sparse execution
    def _packed(self) -> list[PackedConv]:
        """The units' convolutions with folded batch norms, rebuilt when a weight changes."""
        units = self.units()
        key = pack_key([m for u in units for m in (u.conv, u.norm)])
        if self._packed_cache is None or self._packed_cache[0] != key:
            self._packed_cache = (key, [PackedConv(u.conv, u.norm) for u in units])
        return self._packed_cache[1]

    def _sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Map size at the input of the block and at the output of each unit."""
        sizes = [(height, width)]
        for unit in self.units():
            sizes.append(conv_output_size(unit.conv, *sizes[-1]))
        return sizes

    def unit_masks(self, out_mask: Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
        """For each unit, the ``(B, H, W)`` 0/1 mask of the output pixels sparse execution
        computes for the block output pixels ``out_mask``: the receptive fields of the later
        units, or every pixel once they cover ``DENSE_FRACTION`` of the batch's map.

        For straight-through masks that carry a gradient (training) the dense fallback is
        left out, so that the count stays differentiable for the budget loss."""
        units = self.units()
        masks: list[Tensor] = [out_mask] * len(units)
        mask = out_mask
        fallback = not (out_mask.requires_grad and torch.is_grad_enabled())
        for i in reversed(range(len(units))):
            if fallback and float(mask.sum()) >= DENSE_FRACTION * mask.numel():
                mask = torch.ones_like(mask.detach())
            masks[i] = mask
            if i > 0:
                conv = units[i].conv
                mask = receptive_mask(mask, conv.kernel_size[0], conv.stride[0], conv.padding[0], sizes[i])
        return masks

    def _rows(self, x: Tensor, convs: list[PackedConv], masks: list[Tensor | None],
              scale_unit: tuple[int, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """Run the units on channels-last ``x``, each at the pixels of its mask (``None``:
        every pixel). Returns the last unit's output rows and their pixel indices
        (``None``: every pixel). ``scale_unit = (i, (B, C))`` multiplies unit i's output
        per sample (every-pixel units only)."""
        batch = x.shape[0]
        sizes = self._sizes(*x.shape[-2:])
        source, source_rows = pixel_rows(x), None
        for i, (unit, conv, mask) in enumerate(zip(self.units(), convs, masks)):
            rows = None
            if mask is not None and float(mask.sum()) < mask.numel():
                rows = mask.reshape(-1).nonzero().squeeze(1)
            if conv.kernel == 1 and conv.stride == 1:  # pointwise: the same pixels in and out
                if source_rows is None and rows is not None:
                    source = source.index_select(0, rows)
                h = conv.rows(source.unsqueeze(1))
            elif rows is None and source_rows is None:  # every pixel: a direct convolution
                h = pixel_rows(conv.conv2d(from_rows(source, batch, *sizes[i])))
            else:
                table = neighbor_table(batch, sizes[i], sizes[i + 1], conv.kernel, conv.stride,
                                       conv.padding, conv.dilation, x.device)
                taps = table if rows is None else table.index_select(0, rows)
                if source_rows is not None:
                    taps = compact_index(source_rows, batch * sizes[i][0] * sizes[i][1])[taps]
                h = conv.rows(gather_taps(source, taps))
            if unit.act is not None:
                h = unit.act(h)
            if scale_unit is not None and scale_unit[0] == i:
                h = (h.view(batch, -1, h.shape[1]) * scale_unit[1][:, None, :]).view(-1, h.shape[1])
            source, source_rows = h, rows
        return source, source_rows

    def _add_rows(self, identity: Tensor, h: Tensor, rows: Tensor | None) -> Tensor:
        """``act(identity + h)`` where ``h`` holds the branch at pixel ``rows`` (``None``:
        all); ``act(identity)`` elsewhere. Channels-last result."""
        batch, _, height, width = identity.shape
        ident = pixel_rows(identity)
        if rows is None:
            out = ident + h
            if self.out_act is not None:
                out = self.out_act(out)
        else:
            out = self._finish(ident) if self.out_act is not None else ident.clone()
            out.index_copy_(0, rows, self._finish(ident.index_select(0, rows) + h))
        return from_rows(out, batch, height, width)

    def _forward_sparse(self, x: Tensor, identity: Tensor, d: Decision) -> tuple[Tensor, list | None]:
        if d.spatial is not None:
            return self._sparse_spatial(x, identity, d)
        if d.channel is not None:
            return self._sparse_channel(x, identity, d), None
        return self._sparse_layer(x, identity, d), None

    def _sparse_spatial(self, x: Tensor, identity: Tensor, d: Decision) -> tuple[Tensor, list[Tensor]]:
        sizes = self._sizes(*x.shape[-2:])
        out_mask = self._spatial_mask(d, sizes[-1])
        masks = self.unit_masks(out_mask, sizes)
        rows = out_mask.reshape(-1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return self._finish(identity), masks
        h, computed = self._rows(x, self._packed(), masks)
        if rows.numel() == out_mask.numel():
            rows = None
        elif computed is None:
            h = h.index_select(0, rows)
        if d.layer_scale is not None:
            pixels = sizes[-1][0] * sizes[-1][1]
            per_row = d.layer_scale.repeat_interleave(pixels) if rows is None else d.layer_scale[rows // pixels]
            h = h * per_row[:, None]
        return self._add_rows(identity, h, rows), masks

    def _sample_rows(self, identity: Tensor, samples: Tensor, h: Tensor, out: Tensor | None) -> Tensor:
        """Add per-sample branch outputs ``h`` (rows of ``samples``) into ``out`` (the
        identity's pixel rows, created on first use)."""
        if out is None:
            out = pixel_rows(identity).clone()
        per_sample = out.view(identity.shape[0], -1)
        per_sample.index_add_(0, samples, h.reshape(samples.numel(), -1))
        return out

    def _branch_samples(self, x: Tensor, samples: Tensor, convs: list[PackedConv],
                        scale_unit: tuple[int, Tensor] | None = None) -> Tensor:
        """The branch at every pixel of the ``samples`` of ``x``."""
        if samples.numel() < x.shape[0]:
            x = x.index_select(0, samples).contiguous(memory_format=torch.channels_last)
        return self._rows(x, convs, [None] * len(convs), scale_unit)[0]

    def _finish_rows(self, identity: Tensor, out: Tensor | None) -> Tensor:
        if out is None:
            return self._finish(identity)
        if self.out_act is not None:
            out = self.out_act(out)
        return from_rows(out, identity.shape[0], *identity.shape[-2:])

    def _sparse_layer(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        samples = (d.layer > 0).nonzero().squeeze(1)
        if samples.numel() == 0:
            return self._finish(identity)
        h = self._branch_samples(x, samples, self._packed())
        if d.layer_scale is not None:
            h = (h.view(samples.numel(), -1) * d.layer_scale[samples, None]).view_as(h)
        if samples.numel() == x.shape[0]:
            return self._add_rows(identity, h, None)
        return self._finish_rows(identity, self._sample_rows(identity, samples, h, None))

    def _sparse_channel(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        mask, scale = self._channel_factors(d)
        running = torch.arange(x.shape[0], device=x.device)
        if d.layer is not None:
            running = (d.layer > 0).nonzero().squeeze(1)
        packed = self._packed()
        last = len(packed) - 1
        out = None
        for group, channels in samples_by_channels(mask[running]):
            samples = running[group]
            if channels.numel() == 0:
                h = self._zero_response().expand(samples.numel() * identity.shape[-2] * identity.shape[-1], -1)
            else:
                convs = [conv.sliced(channels if i > 0 else None, channels if i < last else None)
                         for i, conv in enumerate(packed)]
                scale_unit = None if scale is None else (last - 1, scale[samples][:, channels])
                h = self._branch_samples(x, samples, convs, scale_unit)
            if d.layer_scale is not None:
                h = (h.reshape(samples.numel(), -1) * d.layer_scale[samples, None]).view(-1, h.shape[1])
            if samples.numel() == x.shape[0]:
                return self._add_rows(identity, h, None)
            out = self._sample_rows(identity, samples, h, out)
        return self._finish_rows(identity, out)

    def _zero_response(self) -> Tensor:
        """``(1, C_out)``: the last unit's output when all its inputs are zero."""
        last, packed = self.units()[-1], self._packed()[-1]
        h = packed.bias[None, :]
        return h if last.act is None else last.act(h)

    # ----------------------------------------------------------------- plans
    def plan(self, input_shape: tuple[int, int, int], batch: int, rate: float) -> list[Op]:
        """Operators sparse execution runs on a batch of ``(C, H, W)`` inputs when every gate
        of the block has activation ``rate`` (random decisions, expected counts)."""
        channels, height, width = input_shape
        sizes = self._sizes(height, width)
        ops = [Op("masker", type(m).__name__, m.macs(input_shape) * batch, batch * channels * height * width * 4)
               for m in self.maskers()]
        if self.downsample is not None:
            conv = next(m for m in self.downsample.modules() if isinstance(m, nn.Conv2d))
            ops.append(conv_op("shortcut", batch, conv.in_channels, conv.out_channels, conv.kernel_size[0],
                               conv.stride[0], conv.groups, *sizes[-1], height, width))
        if self.config.paradigm == "none" or self.execution == "static":
            return ops + self._plan_units(batch, sizes, [None] * len(self.units())) + self._plan_epilogue(batch, sizes)
        running = batch * (rate if self.config.layer else 1.0)
        if self.config.spatial:
            return ops + self._plan_spatial(batch, running / batch, sizes, rate)
        if self.config.channel:
            return ops + self._plan_channel(batch, running, sizes, rate)
        return ops + self._plan_units(running, sizes, [None] * len(self.units())) + self._plan_epilogue(batch, sizes)

    def _plan_units(self, batch: float, sizes: list[tuple[int, int]], rows: list[float | None],
                    channels: int | None = None) -> list[Op]:
        """Ops of the units, unit i computed at ``rows[i]`` pixels (``None``: all of them), the
        inner channels restricted to ``channels`` if given."""
        ops: list[Op] = []
        units = self.units()
        source_full = True
        for i, (unit, unit_rows) in enumerate(zip(units, rows)):
            conv = unit.conv
            c_in = conv.in_channels if i == 0 or channels is None else channels
            c_out = conv.out_channels if i == len(units) - 1 or channels is None else channels
            groups = conv.groups if conv.groups == 1 or channels is None else max(1, conv.groups * c_out // conv.out_channels)
            kernel, (out_h, out_w) = conv.kernel_size[0], sizes[i + 1]
            count = batch * out_h * out_w if unit_rows is None else unit_rows
            if unit_rows is None and source_full and not (kernel == 1 and conv.stride[0] == 1):
                ops.append(conv_op(f"unit{i}", batch, c_in, c_out, kernel, conv.stride[0], groups, out_h, out_w,
                                   *sizes[i]))
            else:
                if unit_rows is not None:
                    ops.append(Op("index", f"unit{i}.index", count=INDEX_OPS_PER_SPARSE_UNIT))
                if kernel > 1 or (unit_rows is not None and source_full):
                    ops.append(memory_op("gather", f"unit{i}.gather", count * kernel * kernel * c_in,
                                         shape=(count, kernel * kernel, c_in)))
                ops.append(gemm_op(f"unit{i}", count, kernel * kernel * c_in // groups, c_out // groups, groups))
            if unit.act is not None:
                ops.append(memory_op("elementwise", f"unit{i}.act", count * c_out, shape=(count, c_out)))
            source_full = unit_rows is None
        return ops

    def _plan_epilogue(self, batch: float, sizes: list[tuple[int, int]], rows: float | None = None) -> list[Op]:
        out_c = self.units()[-1].conv.out_channels
        full = batch * sizes[-1][0] * sizes[-1][1] * out_c
        sparse_rows = 0.0 if rows is None else 3 * rows * out_c
        pixels = batch * sizes[-1][0] * sizes[-1][1]
        return [memory_op("epilogue", "residual", 1.5 * full + sparse_rows,
                          shape=(pixels, out_c, pixels if rows is None else rows))]

    def _plan_spatial(self, batch: int, layer_rate: float, sizes: list[tuple[int, int]], rate: float) -> list[Op]:
        units = self.units()
        out_h, out_w = sizes[-1]
        patch = self.config.granularity
        grid = math.ceil(out_h / patch) * math.ceil(out_w / patch)
        ops = [Op("index", "mask", count=6)]
        rows: list[float | None] = []
        for i in range(len(units)):
            convs = [(u.conv.kernel_size[0], u.conv.stride[0], u.conv.padding[0]) for u in units[i + 1:]]
            needed = expected_needed(axis_coverage(out_h, patch, convs, sizes[i + 1][0]),
                                     axis_coverage(out_w, patch, convs, sizes[i + 1][1]), grid, rate)
            total = sizes[i + 1][0] * sizes[i + 1][1]
            rows.append(None if layer_rate * needed >= DENSE_FRACTION * total else batch * layer_rate * needed)
        active = batch * layer_rate * expected_needed(axis_coverage(out_h, patch, [], out_h),
                                                      axis_coverage(out_w, patch, [], out_w), grid, rate)
        if active == 0:
            return ops + self._plan_epilogue(batch, sizes)
        return ops + self._plan_units(batch, sizes, rows) + self._plan_epilogue(batch, sizes, active)

    def _plan_channel(self, batch: int, running: float, sizes: list[tuple[int, int]], rate: float) -> list[Op]:
        groups = self.channel_masker.outputs
        keep = int(rate * groups + 0.5)
        channels = min(keep * self.channel_masker.granularity, self.inner_channels)
        separate = 0 < keep < groups  # distinct masks: every running sample is its own group
        runs = running if separate else min(1.0, running)
        per_run = 1.0 if separate else running
        if channels == 0:
            return self._plan_epilogue(batch, sizes)
        weights = sum(u.conv.weight.numel() for u in self.units()) * channels / self.inner_channels
        ops = [memory_op("slice", "weights", weights, count=runs)] if keep < groups else []
        for op in self._plan_units(per_run, sizes, [None] * len(self.units()), channels):
            ops.append(Op(op.kind, op.name, op.macs, op.bytes, op.shape, op.count * runs))
        return ops + self._plan_epilogue(batch, sizes)

    # ----------------------------------------------------------------- accounting
    def _shortcut_macs(self, out_size: tuple[int, int]) -> int:
        if self.downsample is None:
            return 0
        return sum(conv_macs(m, *out_size) for m in self.downsample.modules() if isinstance(m, nn.Conv2d))

    def static_macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the static block (branch and shortcut) for one ``(C, H, W)`` input."""
        sizes = self._sizes(input_shape[-2], input_shape[-1])
        branch = sum(conv_macs(u.conv, *size) for u, size in zip(self.units(), sizes[1:]))
        return branch + self._shortcut_macs(sizes[-1])

    def _record(self, input_shape: torch.Size, device: torch.device, d: Decision | None,
                unit_masks: list[Tensor] | None) -> BlockRecord:
        shape = tuple(input_shape[1:])
        static = self.static_macs(shape)
        batch = input_shape[0]
        if d is None:
            ones = torch.ones(batch, device=device)
            return BlockRecord(ones, ones.double() * static, static, shape)
        units = self.units()
        sizes = self._sizes(shape[-2], shape[-1])
        fixed = self._shortcut_macs(sizes[-1]) + sum(m.macs(shape) for m in self.maskers())
        if d.spatial is not None:
            rate = d.spatial.flatten(1).mean(dim=1)
            if unit_masks is None:
                unit_masks = self.unit_masks(self._spatial_mask(d, sizes[-1]), sizes)
            branch = sum(mask.flatten(1).sum(dim=1, dtype=torch.float64) * conv_macs(u.conv, 1, 1)
                         for u, mask in zip(units, unit_masks))
            layer = None  # folded into the spatial mask
        elif d.channel is not None:
            mask, _ = self._channel_factors(d)
            active = mask.sum(dim=1, dtype=torch.float64)
            rate = d.channel.mean(dim=1)
            branch = 0.0
            for i, (unit, size) in enumerate(zip(units, sizes[1:])):
                per_pair = conv_macs(unit.conv, *size, in_channels=1, out_channels=1)
                cin = unit.conv.in_channels if i == 0 else active
                cout = active if i < len(units) - 1 else unit.conv.out_channels
                branch = branch + per_pair * cout * (cin if unit.conv.groups == 1 else 1)
            layer = d.layer
        else:
            rate = torch.ones(batch, device=device)
            branch = static - self._shortcut_macs(sizes[-1])
            layer = d.layer
        if d.layer is not None:
            rate = rate * d.layer
        if layer is not None:
            branch = branch * layer.double()
        return BlockRecord(rate, fixed + branch * torch.ones_like(rate, dtype=torch.float64), static, shape)
