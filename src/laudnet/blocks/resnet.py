"""Dynamic versions of torchvision's ResNet ``BasicBlock`` and ``Bottleneck``.

Module names and shapes are torchvision's, so a torchvision state dict loads into them;
the maskers are extra modules (``spatial_masker``, ``channel_masker``, ``layer_masker``).
"""

from __future__ import annotations

from typing import Callable

from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import conv1x1, conv3x3

from ..config import StageConfig
from ..engine import Unit
from .base import DynamicBlock


class DynamicBasicBlock(DynamicBlock):
    """Two 3×3 convolutions; the channel gate masks the output of the first."""

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        config: StageConfig = StageConfig("none", None),
        gate_scale: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self.setup_gates(config, inplanes, planes, stride, gate_scale)

    def units(self) -> list[Unit]:
        return [Unit(self.conv1, self.bn1, F.relu), Unit(self.conv2, self.bn2, None)]


class DynamicBottleneck(DynamicBlock):
    """1×1 → 3×3 (stride here, torchvision's "ResNet v1.5") → 1×1; the channel gate masks
    the ``width`` channels between them."""

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        config: StageConfig = StageConfig("none", None),
        gate_scale: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.setup_gates(config, inplanes, width, stride, gate_scale)

    def units(self) -> list[Unit]:
        return [Unit(self.conv1, self.bn1, F.relu), Unit(self.conv2, self.bn2, F.relu),
                Unit(self.conv3, self.bn3, None)]
