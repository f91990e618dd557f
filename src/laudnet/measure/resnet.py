"""The ResNet blocks that the benchmark, validation and calibration build: the block shapes
of ResNet-18 and ResNet-50 and their projection shortcuts."""

from __future__ import annotations

from torch import nn

# ResNet-50 bottlenecks: (stage, stride, in channels, width, input side)
RESNET50_BLOCKS = [
    (1, 1, 256, 64, 56),
    (2, 2, 256, 128, 56), (2, 1, 512, 128, 28),
    (3, 2, 512, 256, 28), (3, 1, 1024, 256, 14),
    (4, 2, 1024, 512, 14), (4, 1, 2048, 512, 7),
]
# ResNet-18 basic blocks: (stage, stride, in channels, width, input side)
RESNET18_BLOCKS = [
    (1, 1, 64, 64, 56),
    (2, 2, 64, 128, 56), (2, 1, 128, 128, 28),
    (3, 2, 128, 256, 28), (3, 1, 256, 256, 14),
    (4, 2, 256, 512, 14), (4, 1, 512, 512, 7),
]


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """A 1×1 convolution with batch norm: the shortcut of a block that changes its shape."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


def downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The shortcut of a block as torchvision builds it: a projection where the shape
    changes, else none (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return projection(in_channels, out_channels, stride)
