"""Dynamic RegNets: torchvision's RegNet-Y (and RegNet-X through :func:`convert_regnet`).

The layout and the parameter names are those of ``torchvision.models.regnet``: a 3×3
stride-2 stem, four stages ``trunk_output.block1`` … ``block4`` of residual bottleneck
blocks (the first of each with stride 2), average pooling and ``fc``. Only the blocks are
dynamic. The widths, depths and group widths come from torchvision's ``BlockParams``.

Stages are torchvision's four; at 224×224 their output maps are 56, 28, 14 and 7 pixels
wide, as in ResNet-50. Default granularity: channel, the group width of the stage's 3×3
convolution (a channel group is one convolution group); spatial, 4-4-2-1 as ResNet's
(capped at the map side).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.regnet import BlockParams, SimpleStemIN

from ..blocks.regnet import DynamicResBottleneckBlock
from ..config import GranularitySpec, ParadigmSpec, stage_configs
from .base import DynamicNetwork, check_arguments, feature_sizes, initialise
from .registry import register_model
from .weights import from_static

DEFAULT_SPATIAL_GRANULARITY = (4, 4, 2, 1)

# torchvision's RegNet-Y design parameters (depth, w_0, w_a, w_m, group width), SE ratio 0.25
REGNET_Y = {
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8),
    "regnet_y_800mf": (14, 56, 38.84, 2.4, 16),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24),
    "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264),
}


class DynamicRegNet(DynamicNetwork):
    """RegNet whose residual blocks skip patches, channel groups or whole blocks per input.

    Args:
        block_params: torchvision's ``BlockParams`` (stage widths, depths, strides, group
            widths, bottleneck multipliers, SE ratio).
        paradigm: per-stage paradigm spec, e.g. ``"spatial-spatial-channel-layer"``.
        granularity: per-stage S or G; ``None`` takes the defaults (module docstring).
            Channel granularities must be multiples of the stage's group width.
        num_classes: classifier outputs.
        stem_width: output channels of the stem.
        input_size: nominal input side, used to check that S fits the feature maps.
        gate_scale: learned output scale of kept channel groups / blocks (LC-Net).
    """

    def __init__(
        self,
        block_params: BlockParams,
        paradigm: ParadigmSpec = "spatial",
        granularity: GranularitySpec = None,
        num_classes: int = 1000,
        stem_width: int = 32,
        input_size: int | None = None,
        gate_scale: bool = False,
    ) -> None:
        super().__init__()
        check_arguments(num_classes, input_size, gate_scale)
        p = block_params
        inner = [int(round(w * b)) for w, b in zip(p.widths, p.bottleneck_multipliers)]
        sizes = feature_sizes(math.ceil((input_size or 224) / 2), p.strides)
        defaults = {"spatial": [min(s, size) for s, size in zip(DEFAULT_SPATIAL_GRANULARITY, sizes)],
                    "channel": p.group_widths}
        self.stage_configs = stage_configs(paradigm, granularity, sizes, inner, defaults,
                                           channel_multiples=p.group_widths)

        self.stem = SimpleStemIN(3, stem_width, nn.BatchNorm2d, nn.ReLU)
        stages = []
        width_in = stem_width
        for index, (width, stride, depth, group_width, multiplier, config) in enumerate(
                zip(p.widths, p.strides, p.depths, p.group_widths, p.bottleneck_multipliers, self.stage_configs),
                start=1):
            blocks = nn.Sequential()
            for i in range(depth):
                block = DynamicResBottleneckBlock(width_in if i == 0 else width, width, stride if i == 0 else 1,
                                                  group_width, multiplier, p.se_ratio, config=config,
                                                  gate_scale=gate_scale)
                block.reuse_input = block.proj is None  # its input is the previous block's ReLU output
                blocks.add_module(f"block{index}-{i}", block)
            stages.append((f"block{index}", blocks))
            width_in = width
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)

        initialise(self, _init_module)

    def stages(self) -> list[nn.Sequential]:
        return list(self.trunk_output)

    def named_stages(self) -> list[tuple[str, nn.Sequential]]:
        return list(self.trunk_output.named_children())

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.static_layers.run((self.stem,), x) if self.sparse_inference else self.stem(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.trunk_output(self.forward_stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_module(m: nn.Module) -> None:
    """torchvision's RegNet initialisation."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, mean=0.0, std=0.01)
        nn.init.zeros_(m.bias)


def _regnet_y(name: str, **kwargs) -> DynamicRegNet:
    """RegNet-Y ``name`` of :data:`REGNET_Y`."""
    depth, w_0, w_a, w_m, group_width = REGNET_Y[name]
    with torch.device("cpu"):  # the widths are computed with tensors: not on the meta device
        params = BlockParams.from_init_params(depth=depth, w_0=w_0, w_a=w_a, w_m=w_m, group_width=group_width,
                                              se_ratio=0.25)
    return DynamicRegNet(params, **kwargs)


@register_model
def regnet_y_400mf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_400mf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_400mf", **kwargs)


@register_model
def regnet_y_800mf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_800mf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_800mf", **kwargs)


@register_model
def regnet_y_1_6gf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_1_6gf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_1_6gf", **kwargs)


@register_model
def regnet_y_3_2gf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_3_2gf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_3_2gf", **kwargs)


@register_model
def regnet_y_8gf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_8gf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_8gf", **kwargs)


@register_model
def regnet_y_16gf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_16gf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_16gf", **kwargs)


@register_model
def regnet_y_32gf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_32gf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_32gf", **kwargs)


@register_model
def regnet_y_128gf(**kwargs) -> DynamicRegNet:
    """Dynamic regnet_y_128gf (torchvision layout); keyword arguments as ``DynamicRegNet``."""
    return _regnet_y("regnet_y_128gf", **kwargs)


def convert_regnet(model: torchvision.models.RegNet, **kwargs) -> DynamicRegNet:
    """Dynamic copy of a torchvision RegNet (X or Y) holding all its weights unchanged.

    The block parameters are read off the model's modules; ReLU activations and batch norm
    are required, as in every torchvision RegNet.
    """
    stages = list(model.trunk_output)
    first = [stage[0] for stage in stages]
    for stage in stages:
        for block in stage:
            activations = [block.activation, block.f.a[2], block.f.b[2]]
            norms = [block.f.a[1], block.f.b[1], block.f.c[1]] + ([] if block.proj is None else [block.proj[1]])
            if any(type(a) is not nn.ReLU for a in activations) or any(type(n) is not nn.BatchNorm2d for n in norms):
                raise ValueError("only RegNets with ReLU activations and BatchNorm2d can be converted, "
                                 "as torchvision builds them")
    widths = [block.f.c[0].out_channels for block in first]
    inner = [block.f.b[0].out_channels for block in first]
    se = getattr(first[0].f, "se", None)
    params = BlockParams(
        depths=[len(stage) for stage in stages],
        widths=widths,
        group_widths=[w // block.f.b[0].groups for w, block in zip(inner, first)],
        bottleneck_multipliers=[w_b / w for w_b, w in zip(inner, widths)],
        strides=[block.f.b[0].stride[0] for block in first],
        se_ratio=None if se is None else se.fc1.out_channels / model.stem[0].out_channels,
    )
    dynamic = DynamicRegNet(params, num_classes=model.fc.out_features, stem_width=model.stem[0].out_channels,
                            **kwargs)
    return from_static(dynamic, model)
