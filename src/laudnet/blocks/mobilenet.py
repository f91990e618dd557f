"""Dynamic version of torchvision's MobileNetV2 ``InvertedResidual`` with a residual
connection (stride 1, as many output as input channels).

Module names are torchvision's (``conv.0`` expansion, ``conv.1`` depthwise, ``conv.2`` /
``conv.3`` linear projection and its norm; without expansion ``conv.0`` is the depthwise
unit), so a torchvision state dict loads unchanged. The residual sum has no activation:

- spatial: ``out = x + up(M) * conv(x)``; the sparse path runs expansion, depthwise and
  projection on the active patches with their 1-pixel halo;
- channel: the expanded (hidden) channels are gated in groups of G, after each ReLU6;
  the depthwise convolution is sliced channel by channel, so any G is allowed;
- layer: ``out = x + g * conv(x)``.

Inverted residuals without a residual connection stay torchvision's static modules.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import Conv2dNormActivation

from ..config import StageConfig
from ..engine import Unit
from .base import DynamicBlock


class DynamicInvertedResidual(DynamicBlock):
    """``x + conv(x)``, ``conv`` = [1×1 expansion →] 3×3 depthwise → 1×1 projection."""

    out_act = None

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expand_ratio: int,
        config: StageConfig = StageConfig("none", None),
        gate_scale: bool = False,
    ) -> None:
        super().__init__()
        if stride != 1 or inp != oup:
            raise ValueError(f"only inverted residuals with a residual connection are dynamic (stride 1 and "
                             f"as many output as input channels); got stride {stride}, {inp} -> {oup} channels")
        self.stride = stride
        self.use_res_connect = True
        self.out_channels = oup
        hidden = int(round(inp * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden, kernel_size=1, activation_layer=nn.ReLU6))
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden, activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.downsample = None
        self.setup_gates(config, inp, hidden, stride, gate_scale)

    def units(self) -> list[Unit]:
        *inner, project, norm = self.conv
        return [Unit(c[0], c[1], F.relu6) for c in inner] + [Unit(project, norm, None)]
