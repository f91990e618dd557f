"""Dynamic residual blocks: one semantics, two execution modes.

A residual block computes ``out = act(identity + branch(x))``; its branch is a chain of
*units* (convolution → norm → optional activation, :class:`~laudnet.engine.Unit`). A
dynamic block gates the branch:

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
training). ``sparse`` execution hands the block's branch and its decision to the executor
of the paradigm (:mod:`laudnet.engine`), which skips the work; the plans the latency
predictor prices and the MACs a pass counts (:attr:`DynamicBlock.last`, :mod:`laudnet.blocks.records`)
come from the same paradigm modules. ``static`` runs the original block without gates.
Subclasses only declare their units, their shortcut and their output activation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import StageConfig
from ..engine import Branch, Unit, engine_input, excite, inference
from ..engine import channel as channel_skipping
from ..engine import layer as layer_skipping
from ..engine import spatial as spatial_skipping
from ..gates import ChannelMasker, LayerMasker, Masker, SpatialMasker, decide
from ..sparse import expand_groups
from ..sparse.plan import Op
from ..sparse.pixels import upsample_mask
from .decisions import Decision, FixedDecisions
from .padding import valid_patches
from .records import BlockRecord, record, static_block_macs

EXECUTION_MODES = ("masked", "sparse", "static")
"""How a block computes: dense times decisions, skipping the work, or without gates."""


class DynamicBlock(nn.Module):
    """Base of every dynamic residual block.

    Subclasses create their modules with torchvision's names (so state dicts stay
    compatible), then call :meth:`setup_gates`, and implement :meth:`units`. The shortcut
    is ``self.downsample`` (``None`` for identity) and the output activation
    ``self.out_act`` (``None`` for none).
    """

    downsample: nn.Module | None
    out_act: Callable[..., Tensor] | None = staticmethod(F.relu)

    @property
    def reuse_input(self) -> bool:
        """Set by a network for blocks whose input is an intermediate that nothing reads
        after the block and that the output activation leaves unchanged (a ReLU output
        before a ReLU block): sparse execution then writes the block output into the
        input's memory instead of copying the identity. Hooks that keep such intermediates
        must clone them."""
        return self.branch.reuse_input

    @reuse_input.setter
    def reuse_input(self, value: bool) -> None:
        self.branch.reuse_input = bool(value)

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
        self.spatial_masker = (SpatialMasker(in_channels, config.granularity, stride)
                               if config.spatial else None)
        self.channel_masker = (ChannelMasker(in_channels, inner_channels, config.granularity, gate_scale)
                               if config.channel else None)
        self.layer_masker = LayerMasker(in_channels, gate_scale) if config.layer else None
        # the branch as the sparse engine runs it, read once: blocks do not swap their modules
        self.branch = Branch(self.units(), self.downsample, self.out_act)
        if config.channel:
            self._check_grouped_convs()
        self._check_squeeze_excitation()

    def _check_squeeze_excitation(self) -> None:
        """SE must see the block's output grid: only 1×1 stride-1 convolutions may follow it."""
        units = self.branch.units
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
        units = self.branch.units
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
        """Decisions for ``x``: from the fixed override if set, else from the maskers;
        within an :func:`~laudnet.blocks.padding.image_region`, patches wholly in the
        padding are skipped."""
        if self.fixed is not None:
            for masker in self.maskers():  # the gates still run: fixed decisions cost what gates cost
                masker(x)
            return self._outside_padding(self.fixed.decide(self, x), x)
        return self._outside_padding(self._gate_decisions(x), x)

    def _outside_padding(self, decision: Decision, x: Tensor) -> Decision:
        if decision.spatial is None:
            return decision
        masker = self.spatial_masker
        out_size = (-(-x.shape[-2] // masker.stride), -(-x.shape[-1] // masker.stride))
        valid = valid_patches(*decision.spatial.shape[-2:], masker.granularity, out_size)
        return decision if valid is None else replace(decision, spatial=decision.spatial * valid.to(decision.spatial))

    def _gate_decisions(self, x: Tensor) -> Decision:
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
        if self.execution != "sparse":
            return self._forward(x, sparse=False)
        if self.training:
            raise RuntimeError("sparse execution is for inference: call model.eval() first, "
                               "or use set_execution(model, 'masked') for training")
        with inference(x.device.type):
            return self._forward(engine_input(x), sparse=True)

    def _forward(self, x: Tensor, sparse: bool) -> Tensor:
        identity = self.branch.shortcut(x) if sparse else (x if self.downsample is None else self.downsample(x))
        if self.execution == "static" or self.config.paradigm == "none":
            self._pending, self.last_decision = (x.shape, x.device, None, None), None
            if sparse:  # a static stage, on the same kernels as the others
                return self.branch.dense(x, identity, self.branch.packed())
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
    def last(self, value: BlockRecord | None) -> None:
        self._last, self._pending = value, None

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
        units = self.branch.units
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
                h = h * excite(unit.se, (h * spatial[:, None]).sum(dim=(2, 3)) / count[:, None])
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
            spatial = upsample_mask(d.spatial, self.config.granularity, *self.branch.sizes(*x.shape[-2:])[-1])
        h = self.run_units(x, channel, scale, spatial)
        if spatial is not None:
            h = h * spatial.unsqueeze(1)
        if d.layer is not None:
            gate = d.layer if d.layer_scale is None else d.layer * d.layer_scale
            h = h * gate[:, None, None, None]
        return self._finish(identity + h)

    def _forward_sparse(self, x: Tensor, identity: Tensor, d: Decision) -> tuple[Tensor, list[Tensor] | None]:
        """Hand the branch and the decision to the executor of the paradigm."""
        if d.spatial is not None:
            coarse = d.spatial if d.layer is None else d.spatial * d.layer[:, None, None]
            return spatial_skipping.run(self.branch, x, identity, coarse, self.config.granularity, d.layer_scale)
        if d.channel is not None:
            mask, scale = self._channel_factors(d)
            running = (torch.arange(x.shape[0], device=x.device) if d.layer is None
                       else (d.layer > 0).nonzero().squeeze(1))
            return channel_skipping.run(self.branch, x, identity, mask, scale, running, d.layer_scale), None
        return layer_skipping.run(self.branch, x, identity, d.layer, d.layer_scale), None

    # ----------------------------------------------------------------- plans
    def plan(self, input_shape: tuple[int, int, int], batch: int, rate: float,
             execution: str | None = None) -> list[Op]:
        """Operators sparse execution runs on a batch of ``(C, H, W)`` inputs when the block
        has activation ``rate`` (random decisions, expected counts; a ``layer+X`` block's
        gates each at ``sqrt(rate)``, :meth:`StageConfig.gate_rates`); with
        ``execution="static"`` (default: the block's mode), those of the branch at every pixel."""
        execution = execution or self.execution
        _, height, width = input_shape
        sizes = self.branch.sizes(height, width)
        ops = [Op("masker", type(m).__name__, m.macs(input_shape) * batch, batch * input_shape[0] * height * width * 4)
               for m in self.maskers()]
        ops += self.branch.plan_shortcut(batch, input_shape)
        layer_rate, inner_rate = self.config.gate_rates(rate)
        if self.config.paradigm == "none" or execution == "static":
            return ops + self.branch.plan_dense(batch, sizes)
        if self.config.spatial:
            return ops + spatial_skipping.plan(self.branch, batch, sizes, self.config.granularity, inner_rate,
                                               layer_rate)
        if self.config.channel:
            masker = self.channel_masker
            return ops + channel_skipping.plan(self.branch, batch, sizes, masker.outputs, masker.granularity,
                                               self.inner_channels, inner_rate, layer_rate)
        return ops + layer_skipping.plan(self.branch, batch, sizes, input_shape, rate)

    # ----------------------------------------------------------------- accounting
    def static_macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the static block (branch and shortcut) for one ``(C, H, W)`` input."""
        return static_block_macs(self.branch, input_shape)

    def _record(self, input_shape: torch.Size, device: torch.device, d: Decision | None,
                unit_masks: list[Tensor] | None) -> BlockRecord:
        """The record of a pass; after masked execution, spatial decisions count the pixels
        sparse execution would compute."""
        if d is None:
            return record(self.branch, self.maskers(), input_shape, device, None)
        channel_mask = None if d.channel is None else self._channel_factors(d)[0]
        if d.spatial is not None and unit_masks is None:
            sizes = self.branch.sizes(*input_shape[-2:])
            unit_masks, _ = spatial_skipping.unit_masks(self.branch, self._spatial_mask(d, sizes[-1]), sizes)
        return record(self.branch, self.maskers(), input_shape, device, d, channel_mask, unit_masks)
