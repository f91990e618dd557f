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
the active patches (their pixels inside the map) to compute it.

``masked`` execution computes the dense branch and multiplies (differentiable, for
training). ``sparse`` execution skips the work: it gathers the active patches with the halo
their convolutions need, slices weights to the active channels, runs blocks only for the
samples whose layer gate is on. ``static`` runs the original block without gates.
Subclasses only declare their units, their shortcut and their output activation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import StageConfig
from ..flops import conv_macs, conv_output_size
from ..gates import ChannelMasker, LayerMasker, Masker, SpatialMasker, decide
from ..sparse import (PatchIndex, expand_groups, gather_windows, samples_by_channels,
                      scatter_add_patches, upsample_mask, window_chain, window_validity)

EXECUTION_MODES = ("masked", "sparse", "static")


@dataclass
class Unit:
    """One step of a residual branch: ``act(norm(conv(x)))``, optionally followed by a
    squeeze-excitation ``se`` (torchvision's ``SqueezeExcitation``)."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    act: Callable[[Tensor], Tensor] | None
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

    def _exact(self, batch: int, units: int, generator: torch.Generator) -> Tensor:
        keep = int(self.rate * units + 0.5)
        order = torch.rand(batch, units, generator=generator).argsort(dim=1)
        return torch.zeros(batch, units).scatter_(1, order[:, :keep], 1.0)

    def decide(self, block: "DynamicBlock", x: Tensor) -> Decision:
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
        self.last: BlockRecord | None = None
        self.inner_channels = inner_channels
        self.spatial_masker = (SpatialMasker(in_channels, config.granularity, stride)
                               if config.spatial else None)
        self.channel_masker = (ChannelMasker(in_channels, inner_channels, config.granularity, gate_scale)
                               if config.channel else None)
        self.layer_masker = LayerMasker(in_channels, gate_scale) if config.layer else None
        if config.channel:
            self._check_grouped_convs()
        self._check_squeeze_excitation()

    def _check_squeeze_excitation(self) -> None:
        """SE must see the block's output grid: only 1×1 stride-1 convolutions may follow it."""
        units = self.units()
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
        units = self.units()
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
        identity = x if self.downsample is None else self.downsample(x)
        if self.execution == "static" or self.config.paradigm == "none":
            out = self._finish(identity + self.run_units(x))
            self.last = self._record(x, None)
            return out
        decision = self.decide(x)
        if self.execution == "masked":
            out = self._forward_masked(x, identity, decision)
        else:
            out = self._forward_sparse(x, identity, decision)
        self.last = self._record(x, decision)
        return out

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
        units = self.units()
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

    def _forward_masked(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        channel, scale = self._channel_factors(d) if d.channel is not None else (None, None)
        spatial = None
        if d.spatial is not None:
            height, width = self._unit_sizes(x.shape[-2], x.shape[-1])[-1]
            spatial = upsample_mask(d.spatial, self.config.granularity, height, width)
        h = self.run_units(x, channel, scale, spatial)
        if spatial is not None:
            h = h * spatial.unsqueeze(1)
        if d.layer is not None:
            gate = d.layer if d.layer_scale is None else d.layer * d.layer_scale
            h = h * gate[:, None, None, None]
        return self._finish(identity + h)

    def _forward_sparse(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        if self.training:
            raise RuntimeError("sparse execution is for inference: call model.eval() first, "
                               "or use set_execution(model, 'masked') for training")
        if d.spatial is not None:
            mask = d.spatial if d.layer is None else d.spatial * d.layer[:, None, None]
            out = self._sparse_spatial(x, identity, mask, d.layer_scale)
        elif d.channel is not None:
            out = self._sparse_channel(x, identity, d)
        else:
            out = self._sparse_layer(x, identity, d.layer, d.layer_scale)
        return self._finish(out)

    # ----------------------------------------------------------------- sparse paths
    def _sparse_layer(self, x: Tensor, identity: Tensor, gate: Tensor, scale: Tensor | None) -> Tensor:
        samples = (gate > 0).nonzero(as_tuple=True)[0]
        if samples.numel() == 0:
            return identity
        if samples.numel() == x.shape[0]:
            h = self.run_units(x)
            return identity + (h if scale is None else h * scale[:, None, None, None])
        h = self.run_units(x[samples])
        if scale is not None:
            h = h * scale[samples, None, None, None]
        return identity.index_add(0, samples, h)

    def _sparse_channel(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        mask, scale = self._channel_factors(d)
        running = torch.arange(x.shape[0], device=x.device)
        if d.layer is not None:
            running = (d.layer > 0).nonzero(as_tuple=True)[0]
        out = identity.clone()
        for group, channels in samples_by_channels(mask[running]):
            samples = running[group]
            if channels.numel() == 0:
                h = self._zero_response().expand(samples.numel(), -1, *identity.shape[-2:])
            else:
                h = self._run_units_sliced(x[samples], channels,
                                           None if scale is None else scale[samples][:, channels])
            if d.layer_scale is not None:
                h = h * d.layer_scale[samples, None, None, None]
            out.index_add_(0, samples, h)
        return out

    def _zero_response(self) -> Tensor:
        """``(1, C_out, 1, 1)``: the last unit's output when all its inputs are zero."""
        last = self.units()[-1]
        bias = torch.zeros(1, last.conv.out_channels, 1, 1, device=last.conv.weight.device,
                           dtype=last.conv.weight.dtype)
        if last.conv.bias is not None:
            bias = bias + last.conv.bias[None, :, None, None]
        h = last.norm(bias)
        return h if last.act is None else last.act(h)

    def _run_units_sliced(self, h: Tensor, channels: Tensor, scale: Tensor | None) -> Tensor:
        """The branch on the active inner ``channels`` only, with sliced weights."""
        units = self.units()
        last = len(units) - 1
        for i, unit in enumerate(units):
            conv, norm = unit.conv, unit.norm
            out_idx = channels if i < last else None
            weight, groups = conv.weight, conv.groups
            if groups == 1:
                if out_idx is not None:
                    weight = weight[out_idx]
                if i > 0:
                    weight = weight[:, channels]
            else:  # grouped or depthwise: whole groups are kept (checked in setup_gates)
                if i == 0:
                    h = h[:, channels]
                weight, groups = weight[channels], channels.numel() * groups // conv.out_channels
            bias = conv.bias if conv.bias is None or out_idx is None else conv.bias[out_idx]
            h = F.conv2d(h, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
            if out_idx is None:
                h = norm(h)
            else:
                h = F.batch_norm(h, norm.running_mean[out_idx], norm.running_var[out_idx],
                                 norm.weight[out_idx], norm.bias[out_idx], False, 0.0, norm.eps)
            if unit.act is not None:
                h = unit.act(h)
            if unit.se is not None:
                h = h * _excite(unit.se, h.mean(dim=(2, 3)), out_idx)
            if scale is not None and i == last - 1:
                h = h * scale[:, :, None, None]
        return h

    def windows(self):
        """Window geometry of the spatial path, one per unit input plus the output patch."""
        convs = [(u.conv.kernel_size[0], u.conv.stride[0], u.conv.padding[0], u.conv.dilation[0])
                 for u in self.units()]
        return window_chain(convs, self.config.granularity)

    def _unit_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Output map size of each unit for an ``height × width`` block input."""
        sizes = []
        for unit in self.units():
            height, width = conv_output_size(unit.conv, height, width)
            sizes.append((height, width))
        return sizes

    def _sparse_spatial(self, x: Tensor, identity: Tensor, mask: Tensor, scale: Tensor | None) -> Tensor:
        index = PatchIndex.from_mask(mask)
        if len(index) == 0:
            return identity
        units, windows = self.units(), self.windows()
        sizes = self._unit_sizes(x.shape[-2], x.shape[-1])
        h = gather_windows(x, index, windows[0])
        for i, unit in enumerate(units):
            conv = unit.conv
            h = unit.norm(F.conv2d(h, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups))
            if unit.act is not None:
                h = unit.act(h)
            if unit.se is not None:
                h = h * self._excite_patches(unit.se, h, index, window_validity(*sizes[i], index, windows[i + 1], h))
            if i < len(units) - 1 and units[i + 1].conv.padding[0] > 0:
                h = h * window_validity(*sizes[i], index, windows[i + 1], h)
        if scale is not None:
            h = h * scale[index.batch, None, None, None]
        return scatter_add_patches(identity, h, index, self.config.granularity)

    @staticmethod
    def _excite_patches(se: nn.Module, h: Tensor, index: PatchIndex, valid: Tensor) -> Tensor:
        """Excitation of each gathered patch ``(N, C, 1, 1)``: per sample, the SE means are
        taken over the pixels of its active patches that lie inside the map (``valid``)."""
        samples, row = index.batch.unique(return_inverse=True)
        sums = h.new_zeros(samples.numel(), h.shape[1]).index_add_(0, row, (h * valid).sum(dim=(2, 3)))
        counts = h.new_zeros(samples.numel()).index_add_(0, row, valid.sum(dim=(1, 2, 3)))
        return _excite(se, sums / counts.clamp_min(1)[:, None])[row]

    # ----------------------------------------------------------------- accounting
    def _shortcut_macs(self, out_size: tuple[int, int]) -> int:
        if self.downsample is None:
            return 0
        return sum(conv_macs(m, *out_size) for m in self.downsample.modules() if isinstance(m, nn.Conv2d))

    def static_macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the static block (branch and shortcut) for one ``(C, H, W)`` input."""
        sizes = self._unit_sizes(input_shape[-2], input_shape[-1])
        branch = sum(conv_macs(u.conv, *size) for u, size in zip(self.units(), sizes))
        excitation = sum(_se_macs(u.se) for u in self.units() if u.se is not None)
        return branch + excitation + self._shortcut_macs(sizes[-1])

    def _record(self, x: Tensor, d: Decision | None) -> BlockRecord:
        shape = tuple(x.shape[1:])
        static = self.static_macs(shape)
        batch = x.shape[0]
        if d is None:
            ones = torch.ones(batch, device=x.device)
            return BlockRecord(ones, ones.double() * static, static, shape)
        units = self.units()
        sizes = self._unit_sizes(shape[-2], shape[-1])
        fixed = self._shortcut_macs(sizes[-1]) + sum(m.macs(shape) for m in self.maskers())
        if d.spatial is not None:
            patches = d.spatial.flatten(1).sum(dim=1, dtype=torch.float64)
            rate = d.spatial.flatten(1).mean(dim=1)
            windows = self.windows()
            per_patch = sum(conv_macs(u.conv, w.size, w.size) for u, w in zip(units, windows[1:]))
            per_sample = sum(_se_macs(u.se) for u in units if u.se is not None)  # samples with patches
            branch = patches * per_patch + (patches > 0) * per_sample
        elif d.channel is not None:
            mask, _ = self._channel_factors(d)
            active = mask.sum(dim=1, dtype=torch.float64)
            rate = d.channel.mean(dim=1)
            branch = 0.0
            for i, (unit, size) in enumerate(zip(units, sizes)):
                cin = unit.conv.in_channels if i == 0 else active
                cout = active if i < len(units) - 1 else unit.conv.out_channels
                branch = branch + conv_macs(unit.conv, *size, in_channels=cin, out_channels=cout)
                if unit.se is not None:
                    branch = branch + _se_macs(unit.se, cout)
        else:
            rate = torch.ones(batch, device=x.device)
            branch = static - self._shortcut_macs(sizes[-1])
        if d.layer is not None:
            rate = rate * d.layer
            branch = branch * d.layer.double()
        return BlockRecord(rate, fixed + branch * torch.ones_like(rate, dtype=torch.float64), static, shape)
