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

A unit may end in squeeze-excitation (SE, RegNet-Y), applied after its activation and the
channel mask. SE multiplies each channel by an excitation computed from the channel's mean,
and that mean is taken over the positions the block computes: under spatial skipping, the
mean over the active output positions, ``sum(h * up(M)) / max(sum(up(M)), 1)``; under
channel skipping, skipped channels enter as zeros (their own excitation is irrelevant, they
stay zero). With every gate open this is the ordinary SE. So that the SE map is the block's
output grid, only 1×1 stride-1 convolutions may follow it, and sparse execution needs only
the active output pixels to compute it.

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
from ..sparse.extension import extension
from ..sparse.packed import PackedConv, channels_last_weight, direct_convolution, pack_key
from ..sparse.plan import (INDEX_OPS_PER_SPARSE_UNIT, Op, axis_coverage, conv_op, expected_needed, gemm_op,
                           memory_op)
from ..sparse.pixels import (compact_index, from_rows, gather_taps, neighbor_table, pixel_rows,
                             receptive_mask, upsample_mask)

EXECUTION_MODES = ("masked", "sparse", "static")

DENSE_FRACTION = 0.85
"""Share of a unit's output pixels above which sparse execution computes all of them."""

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


@dataclass
class Unit:
    """One step of a residual branch: ``act(norm(conv(x)))``.

    ``act`` is a ``torch.nn.functional`` activation (sparse execution calls it with
    ``inplace=True`` on tensors it owns)."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    act: Callable[..., Tensor] | None
    se: nn.Module | None = None


def _excite(se: nn.Module, pooled: Tensor, channels: Tensor | None = None) -> Tensor:
    """``(N, C, 1, 1)`` excitation of torchvision's ``SqueezeExcitation`` from channel means
    ``(N, C)``, optionally restricted to ``channels`` (skipped ones contribute zero means)."""
    w1, w2, b2 = se.fc1.weight, se.fc2.weight, se.fc2.bias
    if channels is not None:
        w1, w2, b2 = w1[:, channels], w2[channels], b2[channels]
    hidden = se.activation(F.conv2d(pooled[:, :, None, None], w1, se.fc1.bias))
    return se.scale_activation(F.conv2d(hidden, w2, b2))


def _se_macs(se: nn.Module, channels: int | Tensor | None = None) -> int | Tensor:
    """MACs of one excitation, on ``channels`` of its channels if given."""
    return conv_macs(se.fc1, 1, 1, in_channels=channels) + conv_macs(se.fc2, 1, 1, out_channels=channels)


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

    def detach(self) -> "Decision":
        """A copy cut from the autograd graph, for inspection after the forward pass."""
        return Decision(**{k: None if v is None else v.detach() for k, v in self.__dict__.items()})


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
    out_act: Callable[..., Tensor] | None = staticmethod(F.relu)
    reuse_input: bool = False
    """Set by a network for blocks whose input is an intermediate that nothing reads after
    the block and that the output activation leaves unchanged (a ReLU output before a
    ReLU block): sparse execution then writes the block output into the input's memory
    instead of copying the identity. Hooks that keep such intermediates must clone them."""

    def setup_gates(self, config: StageConfig, in_channels: int, inner_channels: int,
                    stride: int, gate_scale: bool = False) -> None:
        """Create the maskers that ``config`` asks for."""
        self.config = config
        self.execution = "masked"
        self.fixed: FixedDecisions | None = None
        self._last: BlockRecord | None = None
        self._pending: tuple | None = None
        self.last_decision: Decision | None = None  # detached, for inspection (mask overlays)
        self.inner_channels = inner_channels
        self._packed_cache: tuple[tuple, tuple[list[PackedConv], PackedConv | None]] | None = None
        self.spatial_masker = (SpatialMasker(in_channels, config.granularity, stride)
                               if config.spatial else None)
        self.channel_masker = (ChannelMasker(in_channels, inner_channels, config.granularity, gate_scale)
                               if config.channel else None)
        self.layer_masker = LayerMasker(in_channels, gate_scale) if config.layer else None
        self._units = self.units()  # the branch, read once: blocks do not swap their modules
        for unit in self._units:  # the layout of sparse execution's GEMMs, set once (no copy later)
            channels_last_weight(unit.conv)
        self._size_cache: dict[tuple[int, int], list[tuple[int, int]]] = {}
        if config.channel:
            self._check_grouped_convs()
        self._check_squeeze_excitation()

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed operands out (derived from the weights,
        rebuilt on use; oneDNN's packed layouts can be neither copied nor pickled)."""
        state = self.__dict__.copy()
        state["_packed_cache"] = None
        return state

    def _check_squeeze_excitation(self) -> None:
        """SE must see the block's output grid: only 1×1 stride-1 convolutions may follow it."""
        units = self._units
        for i, unit in enumerate(units):
            later = [u.conv for u in units[i + 1:]]
            if unit.se is not None and any(c.kernel_size != (1, 1) or c.stride != (1, 1) or c.padding != (0, 0)
                                           for c in later):
                raise ValueError(f"squeeze-excitation of unit {i} is followed by a convolution that is not "
                                 "1x1 with stride 1; dynamic blocks need SE on the output grid")

    def _check_grouped_convs(self) -> None:
        """Channel skipping slices grouped and depthwise convolutions by whole groups: they
        must map the inner channels to themselves, and a channel group of G must cover
        whole convolution groups."""
        units = self._units
        for i, unit in enumerate(units):
            conv = unit.conv
            if conv.groups == 1:
                continue
            width = conv.out_channels // conv.groups
            if i == len(units) - 1 or not conv.in_channels == conv.out_channels == self.inner_channels:
                raise ValueError(f"channel skipping needs grouped convolutions to map the {self.inner_channels} "
                                 f"inner channels to themselves; unit {i} maps {conv.in_channels} to "
                                 f"{conv.out_channels}")
            if self.config.granularity % width:
                raise ValueError(f"channel granularity {self.config.granularity} splits the {width}-channel "
                                 f"groups of a grouped convolution; allowed: multiples of {width}")

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
        identity = self._shortcut(x)
        if self.execution == "static" or self.config.paradigm == "none":
            self._pending, self.last_decision = (x.shape, x.device, None, None), None
            if self.execution == "sparse":  # a static stage, on the same kernels as the others
                return self._dense_branch(x, identity, self._packed())
            return self._finish(identity + self.run_units(x))
        decision = self.decide(x)
        if self.execution == "masked":
            out, unit_masks = self._forward_masked(x, identity, decision), None
        else:
            out, unit_masks = self._forward_sparse(x, identity, decision)
        self._pending, self.last_decision = (x.shape, x.device, decision, unit_masks), decision.detach()
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

    def run_units(self, h: Tensor, channel: Tensor | None = None, scale: Tensor | None = None,
                  spatial: Tensor | None = None) -> Tensor:
        """The dense branch; ``channel`` and ``scale`` (``(B, C_inner)``) multiply the
        outputs of the inner units, the scale only the last inner one; ``spatial``, the
        upsampled mask ``(B, H_out, W_out)``, restricts the SE means to active positions."""
        units = self._units
        for i, unit in enumerate(units):
            h = unit.norm(unit.conv(h))
            if unit.act is not None:
                h = unit.act(h)
            if channel is not None and i < len(units) - 1:
                h = h * channel[:, :, None, None]
            if unit.se is not None and spatial is None:
                h = unit.se(h)
            elif unit.se is not None:
                count = spatial.sum(dim=(1, 2)).clamp_min(1)
                h = h * _excite(unit.se, (h * spatial[:, None]).sum(dim=(2, 3)) / count[:, None])
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
        spatial = None
        if d.spatial is not None:
            spatial = upsample_mask(d.spatial, self.config.granularity, *self._sizes(*x.shape[-2:])[-1])
        h = self.run_units(x, channel, scale, spatial)
        if spatial is not None:
            h = h * spatial.unsqueeze(1)
        if d.layer is not None:
            gate = d.layer if d.layer_scale is None else d.layer * d.layer_scale
            h = h * gate[:, None, None, None]
        return self._finish(identity + h)

    # ----------------------------------------------------------------- sparse execution
    def _shortcut_pair(self) -> tuple[nn.Conv2d, nn.Module] | None:
        """The shortcut's convolution and norm when it is just those two (sparse execution
        then runs it packed, the norm folded)."""
        layers = list(self.downsample.children()) if self.downsample is not None else []
        if len(layers) == 2 and isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], (nn.BatchNorm2d, nn.Identity)):
            return layers[0], layers[1]
        return None

    def _packed(self) -> list[PackedConv]:
        """The units' operands, norms folded, rebuilt when a weight or statistic changes."""
        return self._packed_all()[0]

    def _packed_all(self) -> tuple[list[PackedConv], PackedConv | None]:
        """The units' packed operands and the shortcut's (``None`` unless packable)."""
        pairs = [(u.conv, u.norm) for u in self._units]
        shortcut = self._shortcut_pair()
        key = pack_key(pairs + ([shortcut] if shortcut is not None else []))
        if self._packed_cache is None or self._packed_cache[0] != key:
            self._packed_cache = (key, ([PackedConv(*pair) for pair in pairs],
                                        None if shortcut is None else PackedConv(*shortcut)))
        return self._packed_cache[1]

    def _shortcut(self, x: Tensor) -> Tensor:
        """The identity branch; packed (norm folded, channels-last) in sparse execution."""
        if self.downsample is None:
            return x
        packed = self._packed_all()[1] if self.execution == "sparse" else None
        return self.downsample(x) if packed is None else packed.map(x)

    def _sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Map size at the input of the block and at the output of each unit."""
        key = (height, width)
        if key not in self._size_cache:
            sizes = [key]
            for unit in self._units:
                sizes.append(conv_output_size(unit.conv, *sizes[-1]))
            self._size_cache[key] = sizes
        return self._size_cache[key]

    def _geometry(self, height: int, width: int) -> list[list[int]]:
        """Per unit: kernel, stride, padding, input and output map sizes, and whether it
        gathers taps (the C++ kernels' description of the branch)."""
        sizes = self._sizes(height, width)
        return [[u.conv.kernel_size[0], u.conv.stride[0], u.conv.padding[0], *sizes[i], *sizes[i + 1],
                 int(not (u.conv.kernel_size[0] == 1 and u.conv.stride[0] == 1))]
                for i, u in enumerate(self._units)]

    def unit_masks(self, out_mask: Tensor, sizes: list[tuple[int, int]],
                   with_rows: bool = False) -> tuple[list[Tensor], list[Tensor | None]]:
        """For each unit, the ``(B, H, W)`` 0/1 mask of the output pixels sparse execution
        computes for the block output pixels ``out_mask``: the receptive fields of the later
        units, or every pixel once they cover ``DENSE_FRACTION`` of the batch's map; with
        ``with_rows``, also the pixel rows of each mask (``None`` for every pixel).

        For straight-through masks that carry a gradient (training) the dense fallback is
        left out, so that the count stays differentiable for the budget loss."""
        units = self._units
        masks: list[Tensor] = [out_mask] * len(units)
        rows: list[Tensor | None] = [None] * len(units)
        mask = out_mask
        fallback = not (out_mask.requires_grad and torch.is_grad_enabled())
        full = False
        for i in reversed(range(len(units))):
            if not full:
                count = float(mask.detach().sum())
                full = count == mask.numel()
                if fallback and count >= DENSE_FRACTION * mask.numel():
                    mask, full = torch.ones_like(mask.detach()), True
                elif with_rows and not full:
                    rows[i] = mask.reshape(-1).nonzero().squeeze(1)
            masks[i] = mask
            if i > 0:
                conv = units[i].conv
                if full and conv.kernel_size[0] >= conv.stride[0]:  # a whole map needs a whole map
                    mask = mask.new_ones(mask.shape[0], *sizes[i])
                else:
                    full = False
                    mask = receptive_mask(mask, conv.kernel_size[0], conv.stride[0], conv.padding[0], sizes[i])
        return masks, rows

    def _rows(self, x: Tensor, convs: list[PackedConv], unit_rows: list[Tensor | None],
              scale_unit: tuple[int, Tensor] | None = None, active: Tensor | None = None,
              channels: Tensor | None = None, unit_taps: list[Tensor | None] | None = None,
              unit_mask: Tensor | None = None, residual: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Run the units on channels-last ``x``, each at its pixel rows (``None``: every
        pixel). Returns the last unit's output rows and their pixel indices (``None``:
        every pixel). ``scale_unit = (i, (B, C))`` multiplies unit i's output per sample
        (every-pixel units only). Squeeze-excitation averages over the block's ``active``
        output rows (``None``: all), with its weights restricted to ``channels`` if given.
        ``unit_taps`` may give the gathered taps of units on a subset of pixels, as the C++
        kernels compute them. ``unit_mask`` ``(B, C)`` multiplies the outputs of every unit but
        the last per sample, before squeeze-excitation (every-pixel units only): the channel
        masks of samples that run together on the union of their channels. ``residual``
        (the identity's pixel rows, every pixel computed, see :meth:`_fuses_residual`) is
        added to the last unit's output and the block's activation applied in the same
        call: the result is then the block's output."""
        batch = x.shape[0]
        sizes = self._sizes(*x.shape[-2:])
        source, source_rows = pixel_rows(x), None
        if convs[0].input_index is not None:  # a sliced grouped first unit reads its groups' inputs
            source = source.index_select(1, convs[0].input_index)
        last = len(convs) - 1
        for i, (unit, conv, rows) in enumerate(zip(self._units, convs, unit_rows)):
            act, added = (self.out_act, residual) if i == last and residual is not None else (unit.act, None)
            if rows is None and direct_convolution(conv.kernel, conv.stride, source_rows is None):
                out_size = sizes[i + 1]
                h = pixel_rows(conv.map(from_rows(source, batch, *sizes[i]), act,
                                        None if added is None else from_rows(added, batch, *out_size)))
            elif conv.kernel == 1 and conv.stride == 1:  # pointwise: the same pixels in and out
                if source_rows is None and rows is not None:
                    source = source.index_select(0, rows)
                h = conv.rows(source.unsqueeze(1), act, added)
            else:
                taps = None if unit_taps is None else unit_taps[i]
                if taps is None:
                    table = neighbor_table(batch, sizes[i], sizes[i + 1], conv.kernel, conv.stride,
                                           conv.padding, conv.dilation, x.device)
                    taps = table if rows is None else table.index_select(0, rows)
                    if source_rows is not None:
                        taps = compact_index(source_rows, batch * sizes[i][0] * sizes[i][1])[taps]
                h = conv.rows(gather_taps(source, taps), act, added)
            if unit_mask is not None and i < last:
                h.view(batch, -1, h.shape[1]).mul_(unit_mask[:, None, :])
            if unit.se is not None:
                self._excite_rows(unit.se, h, rows, active, batch, sizes[i + 1], channels)
            if scale_unit is not None and scale_unit[0] == i:
                h.view(batch, -1, h.shape[1]).mul_(scale_unit[1][:, None, :])
            source, source_rows = h, rows
        return source, source_rows

    def _fuses_residual(self) -> bool:
        """Whether the residual add and the block's activation can run inside the last
        unit's operator: its own output needs no activation or excitation first."""
        last = self._units[-1]
        return last.act is None and last.se is None

    def _dense_branch(self, x: Tensor, identity: Tensor, convs: list[PackedConv], **options) -> Tensor:
        """``act(identity + branch(x))`` with every pixel of every sample computed, the
        residual fused into the last unit where it can be (``options``: those of
        :meth:`_rows`)."""
        every = [None] * len(convs)
        if not self._fuses_residual():
            return self._add_rows(x, identity, self._rows(x, convs, every, **options)[0], None)
        out = self._rows(x, convs, every, residual=pixel_rows(identity), **options)[0]
        return from_rows(out, *identity.shape[:1], *identity.shape[-2:])

    @staticmethod
    def _excite_rows(se: nn.Module, h: Tensor, rows: Tensor | None, active: Tensor | None, batch: int,
                     size: tuple[int, int], channels: Tensor | None) -> None:
        """Squeeze-excitation, in place, of pixel rows ``h`` (at ``rows``, ``None``: all),
        the means taken over the ``active`` rows of each sample (``None``: all its pixels).
        Samples without active rows get no excitation (they add nothing to the output)."""
        pixels, width = size[0] * size[1], h.shape[1]
        if active is None:
            excitation = _excite(se, h.view(batch, pixels, width).mean(dim=1), channels).view(batch, 1, width)
            h.view(batch, pixels, width).mul_(excitation)
            return
        present, sample = torch.unique(active // pixels, return_inverse=True)
        values = h if rows is not None else h.index_select(0, active)  # rows, if given, are the active ones
        sums = h.new_zeros(present.numel(), width).index_add_(0, sample, values)
        counts = torch.bincount(sample, minlength=present.numel()).to(h.dtype)
        excitation = _excite(se, sums / counts[:, None], channels).view(-1, width)
        if rows is not None:
            h.mul_(excitation[sample])
        else:
            table = h.new_ones(batch, width).index_copy_(0, present, excitation)
            h.view(batch, pixels, width).mul_(table[:, None, :])

    def _owns_identity(self, x: Tensor, identity: Tensor) -> tuple[bool, bool]:
        """Whether sparse execution may write into the identity, and whether the output
        activation leaves the identity unchanged where the branch adds nothing."""
        clean = self.out_act is None or (identity is x and self.reuse_input)
        return identity is not x or self.reuse_input, clean

    def _add_rows(self, x: Tensor, identity: Tensor, h: Tensor, rows: Tensor | None) -> Tensor:
        """``act(identity + h)`` where ``h`` holds the branch at pixel ``rows`` (``None``:
        all); ``act(identity)`` elsewhere. Channels-last result."""
        batch, _, height, width = identity.shape
        ident = pixel_rows(identity)
        owned, clean = self._owns_identity(x, identity)
        act = self.out_act
        if rows is None:
            out = ident.add_(h) if owned else ident + h
            if act is not None:
                act(out, inplace=True)
            return from_rows(out, batch, height, width)
        kernels = extension() if ident.device.type == "cpu" else None
        if kernels is not None and act in (None, F.relu) and ident.dtype == h.dtype == torch.float32:
            out = kernels.add_rows(ident, h.contiguous(), rows, act is F.relu, owned, clean)
            return from_rows(out, batch, height, width)
        added = ident.index_select(0, rows).add_(h)
        if act is not None:
            act(added, inplace=True)
        if not owned:
            out = ident.clone() if act is None else act(ident)
        else:
            out = ident
            if not clean:
                act(out, inplace=True)
        out.index_copy_(0, rows, added)
        return from_rows(out, batch, height, width)

    def _add_samples(self, x: Tensor, identity: Tensor, parts: list[tuple[Tensor, Tensor]]) -> Tensor:
        """``act(identity + h)`` for the ``(samples, h)`` in ``parts`` (``h``: the branch's
        pixel rows of those samples), ``act(identity)`` for the other samples."""
        if len(parts) == 1 and parts[0][0].numel() == x.shape[0]:
            return self._add_rows(x, identity, parts[0][1], None)
        owned, clean = self._owns_identity(x, identity)
        if not parts:
            return identity if clean else self._finish(identity)
        out = pixel_rows(identity)
        if not owned:
            out = out.clone()
        per_sample = out.view(identity.shape[0], -1)
        for samples, h in parts:
            per_sample.index_add_(0, samples, h.reshape(samples.numel(), -1))
        if self.out_act is not None:
            self.out_act(out, inplace=True)
        return from_rows(out, identity.shape[0], *identity.shape[-2:])

    def _forward_sparse(self, x: Tensor, identity: Tensor, d: Decision) -> tuple[Tensor, list | None]:
        if d.spatial is not None:
            return self._sparse_spatial(x, identity, d)
        if d.channel is not None:
            return self._sparse_channel(x, identity, d), None
        return self._sparse_layer(x, identity, d), None

    def _sparse_spatial(self, x: Tensor, identity: Tensor, d: Decision) -> tuple[Tensor, list[Tensor] | None]:
        sizes = self._sizes(*x.shape[-2:])
        kernels = extension() if x.device.type == "cpu" else None
        if kernels is not None:  # the same rows and taps, in one call
            coarse = d.spatial if d.layer is None else d.spatial * d.layer[:, None, None]
            rows, unit_rows, unit_taps = kernels.spatial_rows(coarse, self.config.granularity,
                                                              self._geometry(*sizes[0]), DENSE_FRACTION)
            masks, total = None, x.shape[0] * sizes[-1][0] * sizes[-1][1]
        else:
            out_mask = self._spatial_mask(d, sizes[-1])
            masks, unit_rows = self.unit_masks(out_mask, sizes, with_rows=True)
            rows, unit_taps, total = out_mask.reshape(-1).nonzero().squeeze(1), None, out_mask.numel()
        if rows.numel() == 0:
            return self._add_samples(x, identity, []), masks
        h, computed = self._rows(x, self._packed(), unit_rows, active=rows, unit_taps=unit_taps)
        if rows.numel() == total:
            rows = None
        elif computed is None:
            h = h.index_select(0, rows)
        if d.layer_scale is not None:
            pixels = sizes[-1][0] * sizes[-1][1]
            per_row = d.layer_scale.repeat_interleave(pixels) if rows is None else d.layer_scale[rows // pixels]
            h = h * per_row[:, None]
        return self._add_rows(x, identity, h, rows), masks

    def _branch_samples(self, x: Tensor, samples: Tensor, convs: list[PackedConv],
                        scale_unit: tuple[int, Tensor] | None = None, channels: Tensor | None = None,
                        unit_mask: Tensor | None = None) -> Tensor:
        """The branch at every pixel of the ``samples`` of ``x``."""
        if samples.numel() < x.shape[0]:  # copy the samples' pixel rows (x is channels-last)
            batch, channels_in, height, width = x.shape
            picked = pixel_rows(x).view(batch, -1).index_select(0, samples)
            x = from_rows(picked.view(-1, channels_in), samples.numel(), height, width)
        return self._rows(x, convs, [None] * len(convs), scale_unit, channels=channels, unit_mask=unit_mask)[0]

    def _sparse_layer(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        samples = (d.layer > 0).nonzero().squeeze(1)
        if samples.numel() == 0:
            return self._add_samples(x, identity, [])
        if samples.numel() == x.shape[0] and d.layer_scale is None:
            return self._dense_branch(x, identity, self._packed())
        h = self._branch_samples(x, samples, self._packed())
        if d.layer_scale is not None:
            h = (h.view(samples.numel(), -1) * d.layer_scale[samples, None]).view_as(h)
        return self._add_samples(x, identity, [(samples, h)])

    def _sparse_channel(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        mask, scale = self._channel_factors(d)
        running = torch.arange(x.shape[0], device=x.device)
        if d.layer is not None:
            running = (d.layer > 0).nonzero().squeeze(1)
        packed = self._packed()
        last = len(packed) - 1
        parts = []
        runs, union_mask = self._channel_runs(mask[running], identity.shape[-2] * identity.shape[-1])
        for group, channels in runs:
            samples = running[group]
            if channels.numel() == 0:
                h = self._zero_response().expand(samples.numel() * identity.shape[-2] * identity.shape[-1], -1)
            else:
                every = channels.numel() == self.inner_channels
                group = self.channel_masker.granularity
                convs = packed if every else [conv.sliced(channels if i > 0 else None, channels if i < last else None,
                                                          group) for i, conv in enumerate(packed)]
                scale_unit = None if scale is None else (last - 1, scale[samples][:, channels])
                if samples.numel() == x.shape[0] and d.layer_scale is None:  # one run of every sample
                    return self._dense_branch(x, identity, convs, scale_unit=scale_unit,
                                              channels=None if every else channels, unit_mask=union_mask)
                h = self._branch_samples(x, samples, convs, scale_unit, None if every else channels, union_mask)
            if d.layer_scale is not None:
                h = (h.reshape(samples.numel(), -1) * d.layer_scale[samples, None]).view(-1, h.shape[1])
            parts.append((samples, h))
        return self._add_samples(x, identity, parts)

    @staticmethod
    def _channel_runs(mask: Tensor, pixels: int) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
        """How the samples of the ``(N, C)`` channel ``mask`` run: one run per distinct mask
        (:func:`samples_by_channels`), or, where :func:`union_is_cheaper`, one run of all on
        the union of their channels, with its ``(N, |union|)`` mask to apply."""
        runs = samples_by_channels(mask)
        if len(runs) > 1:
            union = (mask > 0).any(dim=0).nonzero(as_tuple=True)[0]
            if union_is_cheaper([s.numel() for s, _ in runs], [c.numel() for _, c in runs], union.numel(), pixels):
                return [(torch.arange(mask.shape[0], device=mask.device), union)], mask[:, union]
        return runs, None

    def _zero_response(self) -> Tensor:
        """``(1, C_out)``: the last unit's output when all its inputs are zero."""
        last, packed = self._units[-1], self._packed()[-1]
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
            pixels = batch * sizes[-1][0] * sizes[-1][1]
            ops.append(memory_op("elementwise", "shortcut.norm", pixels * conv.out_channels,
                                 shape=(pixels, conv.out_channels)))
        every = [None] * len(self._units)
        if self.config.paradigm == "none" or self.execution == "static":
            return ops + self._plan_units(batch, sizes, every) + self._plan_epilogue(batch, sizes)
        if self.config.spatial:
            return ops + self._plan_spatial(batch, rate if self.config.layer else 1.0, sizes, rate)
        if self.config.channel:
            return ops + self._plan_channel(batch, rate if self.config.layer else 1.0, sizes, rate)
        if batch == 1:  # the branch runs or not: expected costs
            return ops + [Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * rate)
                          for o in self._plan_units(1, sizes, every) + self._plan_epilogue(1, sizes)] + [
                Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * (1 - rate))
                for o in self._plan_epilogue(1, sizes, 0.0)]
        running = batch * rate
        return (ops + self._plan_pick_samples(running, input_shape) + self._plan_units(running, sizes, every)
                + self._plan_epilogue(batch, sizes, running * sizes[-1][0] * sizes[-1][1], per_sample=True))

    def _plan_pick_samples(self, samples: float, input_shape: tuple[int, int, int]) -> list[Op]:
        """Copying the pixel rows of the samples whose branch runs."""
        rows = samples * input_shape[1] * input_shape[2]
        return [memory_op("gather", "samples", rows * input_shape[0], shape=(rows, 1, input_shape[0]))]

    def _plan_units(self, batch: float, sizes: list[tuple[int, int]], rows: list[float | None],
                    channels: int | None = None) -> list[Op]:
        """Ops of the units, unit i computed at ``rows[i]`` pixels (``None``: all of them), the
        inner channels restricted to ``channels`` if given."""
        ops: list[Op] = []
        units = self._units
        source_full = True
        for i, (unit, unit_rows) in enumerate(zip(units, rows)):
            conv = unit.conv
            c_in = conv.in_channels if i == 0 or channels is None else channels
            c_out = conv.out_channels if i == len(units) - 1 or channels is None else channels
            groups = conv.groups if conv.groups == 1 or channels is None else max(1, conv.groups * c_out // conv.out_channels)
            kernel, (out_h, out_w) = conv.kernel_size[0], sizes[i + 1]
            count = batch * out_h * out_w if unit_rows is None else unit_rows
            if unit_rows is None and direct_convolution(kernel, conv.stride[0], source_full):
                ops.append(conv_op(f"unit{i}", batch, c_in, c_out, kernel, conv.stride[0], groups, out_h, out_w,
                                   *sizes[i]))
            else:
                if unit_rows is not None:
                    ops.append(Op("index", f"unit{i}.index", count=INDEX_OPS_PER_SPARSE_UNIT))
                if kernel > 1 or conv.stride[0] > 1 or (unit_rows is not None and source_full):
                    ops.append(memory_op("gather", f"unit{i}.gather", count * kernel * kernel * c_in,
                                         shape=(count, kernel * kernel, c_in)))
                ops.append(gemm_op(f"unit{i}", count, kernel * kernel * c_in // groups, c_out // groups, groups))
            if unit.act is not None:
                ops.append(memory_op("elementwise", f"unit{i}.act", count * c_out, shape=(count, c_out)))
            if unit.se is not None:  # channel means, the excitation per sample, the product
                ops.append(Op("masker", f"unit{i}.se", batch * _se_macs(unit.se, c_out), 3 * count * c_out * 4))
            source_full = unit_rows is None
        return ops

    def _plan_epilogue(self, batch: float, sizes: list[tuple[int, int]], active: float | None = None,
                       per_sample: bool = False) -> list[Op]:
        """The residual add and activation, as :meth:`_add_rows` / :meth:`_add_samples` run
        them: the branch adds to ``active`` pixel rows (``None``: all), per sample or per row."""
        out_c = self._units[-1].conv.out_channels
        pixels = batch * sizes[-1][0] * sizes[-1][1]
        owned = self.downsample is not None or self.reuse_input
        clean = self.out_act is None or (self.downsample is None and self.reuse_input)
        act = 0.0 if self.out_act is None else 1.0
        if active is None:  # add (3 accesses per element) and activation (2), in place
            accesses = (3 + 2 * act) * pixels * out_c
        elif per_sample:  # clone unless owned, index_add per sample, activation over the map
            accesses = ((0 if owned else 2) + 2 * act) * pixels * out_c + 3 * active * out_c
        else:  # pick the rows, add, activate, copy back; the other rows: a copy or an activation
            accesses = (0 if owned and clean else 2) * pixels * out_c + (7 + 2 * act) * active * out_c
        shape = (pixels, out_c, pixels if active is None else active)
        return [memory_op("epilogue", "residual", accesses / 2, shape=shape)]

    def _plan_spatial(self, batch: int, layer_rate: float, sizes: list[tuple[int, int]], rate: float) -> list[Op]:
        units = self._units
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
            return ops + self._plan_epilogue(batch, sizes, 0.0)
        if active >= batch * out_h * out_w:
            active = None
        return ops + self._plan_units(batch, sizes, rows) + self._plan_epilogue(batch, sizes, active)

    def _plan_channel(self, batch: int, layer_rate: float, sizes: list[tuple[int, int]], rate: float) -> list[Op]:
        groups = self.channel_masker.outputs
        keep = int(rate * groups + 0.5)
        channels = min(keep * self.channel_masker.granularity, self.inner_channels)
        running = batch * layer_rate
        if channels == 0 or running == 0:  # nothing runs (a zero-input response is not planned)
            return self._plan_epilogue(batch, sizes, 0.0)
        separate = keep < groups and batch > 1  # distinct masks: every running sample is its own run
        if separate:  # random masks: the expected union of the running samples' groups
            union_groups = groups * (1 - (1 - keep / groups) ** running)
            union = min(round(union_groups) * self.channel_masker.granularity, self.inner_channels)
            samples = max(1, round(running))
            if union_is_cheaper([1] * samples, [channels] * samples, union, sizes[-1][0] * sizes[-1][1]):
                separate, keep, channels = False, round(union_groups), union
        runs, per_run = (running, 1.0) if separate else (1.0, running)
        fraction = channels / self.inner_channels
        units = self._units
        copied = 0.0  # elements copied by PackedConv.sliced: output rows first, then input columns
        for i, unit in enumerate(units):
            sliced_in, sliced_out = i > 0, i < len(units) - 1
            share = (fraction if sliced_out else 0.0) + (fraction ** (2 if sliced_out else 1) if sliced_in else 0.0)
            copied += unit.conv.weight.numel() * share
        ops = [memory_op("slice", "weights", copied, count=runs)] if keep < groups else []
        if per_run < batch:
            ops += [Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * runs)
                    for o in self._plan_pick_samples(per_run, (units[0].conv.in_channels, *sizes[0]))]
        ops += [Op(o.kind, o.name, o.macs, o.bytes, o.shape, o.count * runs)
                for o in self._plan_units(per_run, sizes, [None] * len(units), channels if keep < groups else None)]
        if running >= batch and not separate:
            return ops + self._plan_epilogue(batch, sizes)
        return ops + self._plan_epilogue(batch, sizes, running * sizes[-1][0] * sizes[-1][1], per_sample=True)

    # ----------------------------------------------------------------- accounting
    def _shortcut_macs(self, out_size: tuple[int, int]) -> int:
        if self.downsample is None:
            return 0
        return sum(conv_macs(m, *out_size) for m in self.downsample.modules() if isinstance(m, nn.Conv2d))

    def static_macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the static block (branch and shortcut) for one ``(C, H, W)`` input."""
        sizes = self._sizes(input_shape[-2], input_shape[-1])
        branch = sum(conv_macs(u.conv, *size) for u, size in zip(self._units, sizes[1:]))
        excitation = sum(_se_macs(u.se) for u in self._units if u.se is not None)
        return branch + excitation + self._shortcut_macs(sizes[-1])

    def _record(self, input_shape: torch.Size, device: torch.device, d: Decision | None,
                unit_masks: list[Tensor] | None) -> BlockRecord:
        shape = tuple(input_shape[1:])
        static = self.static_macs(shape)
        batch = input_shape[0]
        if d is None:
            ones = torch.ones(batch, device=device)
            return BlockRecord(ones, ones.double() * static, static, shape)
        units = self._units
        sizes = self._sizes(shape[-2], shape[-1])
        fixed = self._shortcut_macs(sizes[-1]) + sum(m.macs(shape) for m in self.maskers())
        if d.spatial is not None:
            rate = d.spatial.flatten(1).mean(dim=1)
            if unit_masks is None:
                unit_masks, _ = self.unit_masks(self._spatial_mask(d, sizes[-1]), sizes)
            branch = sum(mask.flatten(1).sum(dim=1, dtype=torch.float64) * conv_macs(u.conv, 1, 1)
                         for u, mask in zip(units, unit_masks))
            excited = (unit_masks[-1].detach().flatten(1).sum(dim=1) > 0).double()  # samples with active pixels
            branch = branch + excited * sum(_se_macs(u.se) for u in units if u.se is not None)
            layer = None  # folded into the spatial mask
        elif d.channel is not None:
            mask, _ = self._channel_factors(d)
            active = mask.sum(dim=1, dtype=torch.float64)
            if not (mask.requires_grad and torch.is_grad_enabled()):  # training keeps the count differentiable
                running = mask if d.layer is None else mask[d.layer > 0]
                union = self._channel_runs(running, sizes[-1][0] * sizes[-1][1])[1]
                if union is not None:  # every sample ran on the union of the channels
                    active = torch.full_like(active, union.shape[1])
            rate = d.channel.mean(dim=1)
            branch = 0.0
            for i, (unit, size) in enumerate(zip(units, sizes[1:])):
                cin = unit.conv.in_channels if i == 0 else active
                cout = active if i < len(units) - 1 else unit.conv.out_channels
                branch = branch + conv_macs(unit.conv, *size, in_channels=cin, out_channels=cout)
                if unit.se is not None:
                    branch = branch + _se_macs(unit.se, cout)
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
