"""Dynamic version of torchvision's RegNet ``ResBottleneckBlock`` (RegNet-X and RegNet-Y).

The branch is torchvision's ``BottleneckTransform`` itself (``f.a`` 1×1, ``f.b`` grouped
3×3 with the stride, ``f.se`` squeeze-excitation for RegNet-Y, ``f.c`` 1×1), and the
shortcut keeps its name ``proj``, so a torchvision state dict loads unchanged; the maskers
are extra modules.

- spatial: ``out = relu(proj(x) + up(M) * f(x))``; the SE of ``f`` averages over the
  active output positions only (see :mod:`laudnet.blocks.base`), so masked and sparse
  execution agree and the sparse path never needs the full map.
- channel: the ``w_b`` channels between ``a`` and ``b`` and between ``b`` and ``c`` are
  gated in groups of G; G must be a multiple of the group width of ``b``, so a channel
  group keeps whole convolution groups. SE sees the skipped channels as zeros.
- layer: ``out = relu(proj(x) + g * f(x))``.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F
from torchvision.models.regnet import BottleneckTransform
from torchvision.ops.misc import Conv2dNormActivation

from ..config import StageConfig
from ..engine import Unit
from .base import DynamicBlock


class DynamicResBottleneckBlock(DynamicBlock):
    """``relu(x + f(x))`` with ``f`` = 1×1 → grouped 3×3 [→ SE] → 1×1, as torchvision's
    ``ResBottleneckBlock`` (ReLU activations, batch norm)."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        group_width: int = 1,
        bottleneck_multiplier: float = 1.0,
        se_ratio: float | None = None,
        config: StageConfig = StageConfig("none", None),
        gate_scale: bool = False,
    ) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = Conv2dNormActivation(width_in, width_out, kernel_size=1, stride=stride,
                                             norm_layer=nn.BatchNorm2d, activation_layer=None)
        self.f = BottleneckTransform(width_in, width_out, stride, nn.BatchNorm2d, nn.ReLU, group_width,
                                     bottleneck_multiplier, se_ratio)
        self.activation = nn.ReLU(inplace=True)
        self.setup_gates(config, width_in, self.f.b[0].out_channels, stride, gate_scale)

    @property
    def downsample(self) -> nn.Module | None:
        """The shortcut, ``proj`` in torchvision's naming."""
        return self.proj

    def units(self) -> list[Unit]:
        f = self.f
        return [Unit(f.a[0], f.a[1], F.relu), Unit(f.b[0], f.b[1], F.relu, getattr(f, "se", None)),
                Unit(f.c[0], f.c[1], None)]
