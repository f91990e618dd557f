"""Maskers (gates) that decide per input what a block computes, and temperature schedules.

Each masker maps the block input to *logits* of "keep" against "skip" for its decision
units (patches, channel groups or the whole block). :func:`decide` turns logits into hard
0/1 decisions: Gumbel-softmax straight-through while training (forward hard, backward
soft), a deterministic threshold at zero in eval mode.

Maskers start at "keep everything": their last layer has zero weights and bias +3, so the
keep logit is 3 whatever the input (keep probability 0.95 under Gumbel noise, always keep
in eval mode) and a converted network initially computes what the static one does.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

KEEP_BIAS = 3.0


def decide(logits: Tensor, temperature: float, training: bool) -> Tensor:
    """Hard keep/skip decisions from logits.

    Training: two-class Gumbel-softmax with straight-through gradients. The difference of
    two Gumbel samples is a logistic sample, so the keep probability is
    ``sigmoid((logit + logistic) / temperature)`` and the forward value is its rounding.
    Eval: ``logit > 0``.
    """
    if not training:
        return (logits > 0).to(logits.dtype)
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())


def output_scale(raw: Tensor) -> Tensor:
    """LC-Net's learned scale of what a gate keeps, in (0, 2) and 1 at initialisation."""
    return 1.0 + torch.tanh(raw)


class Masker(nn.Module):
    """Common state of the maskers: the Gumbel temperature."""

    temperature: float = 1.0

    def macs(self, input_shape: torch.Size) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


def coarse_grid(height: int, width: int, stride: int, granularity: int) -> tuple[int, int]:
    """Shape of the coarse spatial mask: ``(ceil(H_out/S), ceil(W_out/S))``."""
    h_out, w_out = math.ceil(height / stride), math.ceil(width / stride)
    return math.ceil(h_out / granularity), math.ceil(w_out / granularity)


class SpatialMasker(Masker):
    """Keep/skip logits per S×S output patch: average-pool the input to the coarse grid,
    then a 1×1 convolution."""

    def __init__(self, in_channels: int, granularity: int, stride: int = 1) -> None:
        super().__init__()
        self.granularity = granularity
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.constant_(self.conv.bias, KEEP_BIAS)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return coarse_grid(height, width, self.stride, self.granularity)

    def forward(self, x: Tensor) -> Tensor:
        rows, cols = self.grid(x.shape[-2], x.shape[-1])
        pooled = F.adaptive_avg_pool2d(x, (rows, cols)).flatten(2)  # (B, C, rows·cols)
        logits = torch.matmul(self.conv.weight.view(1, -1), pooled)  # the 1×1 convolution, without its overhead
        return logits.view(x.shape[0], rows, cols) + self.conv.bias

    def macs(self, input_shape: torch.Size) -> int:
        rows, cols = self.grid(input_shape[-2], input_shape[-1])
        return rows * cols * self.conv.in_channels


class _PooledMLP(Masker):
    """Global average pool → Linear → ReLU → Linear; hidden width max(C/16, 16)."""

    def __init__(self, in_channels: int, outputs: int, scale: bool) -> None:
        super().__init__()
        hidden = max(in_channels // 16, 16)
        self.outputs = outputs
        self.scale = scale
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, outputs * (2 if scale else 1))
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        with torch.no_grad():
            self.fc2.bias[:outputs] = KEEP_BIAS

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return ``(logits, scale)``, each ``(B, outputs)``; scale is ``None`` when off."""
        z = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
        logits = z[:, : self.outputs]
        return logits, (output_scale(z[:, self.outputs:]) if self.scale else None)

    def macs(self, input_shape: torch.Size) -> int:
        return self.fc1.in_features * self.fc1.out_features + self.fc2.in_features * self.fc2.out_features


class ChannelMasker(_PooledMLP):
    """Keep/skip logits per group of G inner channels (the last group may be smaller)."""

    def __init__(self, in_channels: int, channels: int, granularity: int, scale: bool = False) -> None:
        super().__init__(in_channels, math.ceil(channels / granularity), scale)
        self.channels = channels
        self.granularity = granularity


class LayerMasker(_PooledMLP):
    """One keep/skip logit per sample: run the block or not."""

    def __init__(self, in_channels: int, scale: bool = False) -> None:
        super().__init__(in_channels, 1, scale)


def set_temperature(model: nn.Module, temperature: float) -> None:
    """Set the Gumbel temperature of every masker in ``model``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    for module in model.modules():
        if isinstance(module, Masker):
            module.temperature = float(temperature)


SCHEDULES = ("exponential", "linear", "cosine")


def temperature_schedule(kind: str = "exponential", start: float = 5.0, end: float = 0.1) -> Callable[[float], float]:
    """Return ``tau(progress)`` for progress in [0, 1], annealing from ``start`` to ``end``.

    Exponential (the default, as in LASNet/LAUDNet) decays geometrically; linear and
    cosine interpolate.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"temperature schedule {kind!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    if not (start > 0 and end > 0):
        raise ValueError(f"temperatures must be positive, got start={start}, end={end}")

    def tau(progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if kind == "exponential":
            return start * (end / start) ** p
        if kind == "linear":
            return start + (end - start) * p
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))

    return tau
