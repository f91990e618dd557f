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
        self.last_decision: Decision | None = None  # detached, for inspection (mask overlays)
        self.inner_channels = inner_channels
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
        identity = x if self.downsample is None else self.downsample(x)
        if self.execution == "static" or self.config.paradigm == "none":
            out = self._finish(identity + self.run_units(x))
            self.last, self.last_decision = self._record(x, None), None
            return out
        decision = self.decide(x)
        if self.execution == "masked":
            out = self._forward_masked(x, identity, decision)
        else:
            out = self._forward_sparse(x, identity, decision)
        self.last, self.last_decision = self._record(x, decision), decision.detach()
        return out

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

    def _forward_masked(self, x: Tensor, identity: Tensor, d: Decision) -> Tensor:
        channel, scale = self._channel_factors(d) if d.channel is not None else (None, None)
        h = self.run_units(x, channel, scale)
        if d.spatial is not None:
            h = h * upsample_mask(d.spatial, self.config.granularity, h.shape[-2], h.shape[-1]).unsqueeze(1)
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
            elif groups == conv.in_channels == conv.out_channels:
                weight, groups = weight[channels], channels.numel()
            else:
                raise NotImplementedError("channel skipping of grouped convolutions")
            bias = conv.bias if conv.bias is None or out_idx is None else conv.bias[out_idx]
            h = F.conv2d(h, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
            if out_idx is None:
                h = norm(h)
            else:
                h = F.batch_norm(h, norm.running_mean[out_idx], norm.running_var[out_idx],
                                 norm.weight[out_idx], norm.bias[out_idx], False, 0.0, norm.eps)
            if unit.act is not None:
                h = unit.act(h)
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
            if i < len(units) - 1 and units[i + 1].conv.padding[0] > 0:
                h = h * window_validity(*sizes[i], index, windows[i + 1], h)
        if scale is not None:
            h = h * scale[index.batch, None, None, None]
        return scatter_add_patches(identity, h, index, self.config.granularity)

    # ----------------------------------------------------------------- accounting
    def _shortcut_macs(self, out_size: tuple[int, int]) -> int:
        if self.downsample is None:
            return 0
        return sum(conv_macs(m, *out_size) for m in self.downsample.modules() if isinstance(m, nn.Conv2d))

    def static_macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the static block (branch and shortcut) for one ``(C, H, W)`` input."""
        sizes = self._unit_sizes(input_shape[-2], input_shape[-1])
        branch = sum(conv_macs(u.conv, *size) for u, size in zip(self.units(), sizes))
        return branch + self._shortcut_macs(sizes[-1])

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
            branch = patches * per_patch
        elif d.channel is not None:
            mask, _ = self._channel_factors(d)
            active = mask.sum(dim=1, dtype=torch.float64)
            rate = d.channel.mean(dim=1)
            branch = 0.0
            for i, (unit, size) in enumerate(zip(units, sizes)):
                per_pair = conv_macs(unit.conv, *size, in_channels=1, out_channels=1)
                cin = unit.conv.in_channels if i == 0 else active
                cout = active if i < len(units) - 1 else unit.conv.out_channels
                branch = branch + per_pair * cout * (cin if unit.conv.groups == 1 else 1)
        else:
            rate = torch.ones(batch, device=x.device)
            branch = static - self._shortcut_macs(sizes[-1])
        if d.layer is not None:
            rate = rate * d.layer
            branch = branch * d.layer.double()
        return BlockRecord(rate, fixed + branch * torch.ones_like(rate, dtype=torch.float64), static, shape)
