"""Dynamic ResNets: torchvision's ImageNet ResNets and the CIFAR-style ResNets of He et al.

The layout and the parameter names are those of ``torchvision.models.resnet``; only the
blocks are dynamic. CIFAR-style ResNet-(6n+2) has a 3×3 stem without max-pooling and three
stages of n BasicBlocks with 16/32/64 channels (the variant LC-Net evaluates). Its
shortcuts, where shapes change, are 1×1 convolutions with batch norm (option B).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Mapping, Type, Union

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import conv1x1, conv3x3

from ..blocks.resnet import DynamicBasicBlock, DynamicBottleneck
from ..config import GranularitySpec, ParadigmSpec, stage_configs
from .base import DynamicNetwork, check_arguments, feature_sizes, initialise
from .registry import register_model
from .weights import from_static

Block = Type[Union[DynamicBasicBlock, DynamicBottleneck]]

DEFAULT_GRANULARITY = {
    "imagenet": {"spatial": (4, 4, 2, 1), "channel": (4, 4, 4, 4)},
    "cifar": {"spatial": (4, 2, 1), "channel": (4, 4, 4)},
}


class DynamicResNet(DynamicNetwork):
    """ResNet whose residual blocks skip patches, channel groups or whole blocks per input.

    Args:
        block: ``DynamicBasicBlock`` or ``DynamicBottleneck``.
        layers: blocks per stage.
        paradigm: per-stage paradigm spec, e.g. ``"spatial"`` or ``"spatial-spatial-channel-layer"``.
        granularity: per-stage S or G, e.g. ``"4-4-2-1"``; ``None`` takes the defaults.
        num_classes: classifier outputs.
        cifar: CIFAR-style stem and widths (16/32/64) instead of the ImageNet ones.
        in_channels: image channels (1 for grayscale data).
        input_size: nominal input side, used to check that S fits the feature maps.
        gate_scale: learned output scale of kept channel groups / blocks (LC-Net).
        norm_layer: the norm of every convolution, ``nn.BatchNorm2d`` by default (as
            torchvision's; detection backbones use ``FrozenBatchNorm2d``).
        return_layers: a backbone body without pooling and classifier: ``forward`` returns
            an ``OrderedDict`` of the outputs of these stages, keyed by the mapped names,
            as torchvision's ``IntermediateLayerGetter`` (e.g. ``{"layer1": "0", ...}``).
    """

    def __init__(
        self,
        block: Block,
        layers: list[int],
        paradigm: ParadigmSpec = "spatial",
        granularity: GranularitySpec = None,
        num_classes: int = 1000,
        cifar: bool = False,
        in_channels: int = 3,
        input_size: int | None = None,
        gate_scale: bool = False,
        zero_init_residual: bool = False,
        norm_layer: Callable[..., nn.Module] | None = None,
        return_layers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        check_arguments(num_classes, input_size, gate_scale, in_channels)
        widths = (16, 32, 64) if cifar else (64, 128, 256, 512)
        if len(layers) != len(widths):
            raise ValueError(f"layers must give {len(widths)} stage depths, got {layers}")
        stage_names = [f"layer{i + 1}" for i in range(len(widths))]
        if return_layers is not None and (not return_layers or not set(return_layers) <= set(stage_names)):
            raise ValueError(f"return_layers must map some of {', '.join(stage_names)} to output names, "
                             f"got {dict(return_layers)}")
        self.return_layers = None if return_layers is None else {k: str(return_layers[k])
                                                                   for k in stage_names if k in return_layers}
        self._norm_layer = norm_layer or nn.BatchNorm2d
        input_size = input_size or (32 if cifar else 224)
        stem_side = input_size if cifar else math.ceil(math.ceil(input_size / 2) / 2)
        strides = [1] + [2] * (len(widths) - 1)
        self.stage_configs = stage_configs(paradigm, granularity, feature_sizes(stem_side, strides), widths,
                                           DEFAULT_GRANULARITY["cifar" if cifar else "imagenet"])
        self.cifar = cifar
        self.inplanes = widths[0]
        if cifar:
            self.conv1 = conv3x3(in_channels, self.inplanes)
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for stage, (width, depth, stride, config) in enumerate(zip(widths, layers, strides, self.stage_configs)):
            setattr(self, f"layer{stage + 1}", self._make_layer(block, width, depth, stride, config, gate_scale))
        if self.return_layers is None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

        initialise(self, _init_module)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (DynamicBasicBlock, DynamicBottleneck)):
                    nn.init.constant_(m.units()[-1].norm.weight, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int, config, gate_scale: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self._norm_layer, config=config,
                        gate_scale=gate_scale)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=self._norm_layer, config=config,
                                gate_scale=gate_scale))
            layers[-1].reuse_input = True  # its input is the previous block's ReLU output
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.stage_configs))]

    def named_stages(self) -> list[tuple[str, nn.Sequential]]:
        return [(f"layer{i + 1}", stage) for i, stage in enumerate(self.stages())]

    def forward_stem(self, x: Tensor) -> Tensor:
        if self.sparse_inference:
            return self.maxpool(self.static_layers.run((self.conv1, self.bn1, self.relu), x))
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> Tensor | OrderedDict[str, Tensor]:
        if self.return_layers is not None:
            features = self.stage_outputs(x)
            return OrderedDict((key, features[name]) for name, key in self.return_layers.items())
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_module(m: nn.Module) -> None:
    """torchvision's ResNet initialisation."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)


def _cifar_resnet(depth: int, **kwargs) -> DynamicResNet:
    kwargs.setdefault("num_classes", 10)
    return DynamicResNet(DynamicBasicBlock, [(depth - 2) // 6] * 3, cifar=True, **kwargs)


@register_model
def resnet18(**kwargs) -> DynamicResNet:
    """Dynamic resnet18 (torchvision layout); keyword arguments as ``DynamicResNet``."""
    return DynamicResNet(DynamicBasicBlock, [2, 2, 2, 2], **kwargs)


@register_model
def resnet34(**kwargs) -> DynamicResNet:
    """Dynamic resnet34 (torchvision layout); keyword arguments as ``DynamicResNet``."""
    return DynamicResNet(DynamicBasicBlock, [3, 4, 6, 3], **kwargs)


@register_model
def resnet50(**kwargs) -> DynamicResNet:
    """Dynamic resnet50 (torchvision layout); keyword arguments as ``DynamicResNet``."""
    return DynamicResNet(DynamicBottleneck, [3, 4, 6, 3], **kwargs)


@register_model
def resnet101(**kwargs) -> DynamicResNet:
    """Dynamic resnet101 (torchvision layout); keyword arguments as ``DynamicResNet``."""
    return DynamicResNet(DynamicBottleneck, [3, 4, 23, 3], **kwargs)


@register_model
def resnet152(**kwargs) -> DynamicResNet:
    """Dynamic resnet152 (torchvision layout); keyword arguments as ``DynamicResNet``."""
    return DynamicResNet(DynamicBottleneck, [3, 8, 36, 3], **kwargs)


@register_model
def cifar_resnet20(**kwargs) -> DynamicResNet:
    """Dynamic CIFAR-style ResNet-20; keyword arguments as ``DynamicResNet``."""
    return _cifar_resnet(20, **kwargs)


@register_model
def cifar_resnet32(**kwargs) -> DynamicResNet:
    """Dynamic CIFAR-style ResNet-32; keyword arguments as ``DynamicResNet``."""
    return _cifar_resnet(32, **kwargs)


@register_model
def cifar_resnet44(**kwargs) -> DynamicResNet:
    """Dynamic CIFAR-style ResNet-44; keyword arguments as ``DynamicResNet``."""
    return _cifar_resnet(44, **kwargs)


@register_model
def cifar_resnet56(**kwargs) -> DynamicResNet:
    """Dynamic CIFAR-style ResNet-56; keyword arguments as ``DynamicResNet``."""
    return _cifar_resnet(56, **kwargs)


@register_model
def cifar_resnet110(**kwargs) -> DynamicResNet:
    """Dynamic CIFAR-style ResNet-110; keyword arguments as ``DynamicResNet``."""
    return _cifar_resnet(110, **kwargs)


def resnet_layout(model: nn.Module) -> tuple[Block, list[int]]:
    """Dynamic block type and stage depths of a torchvision ResNet's ``layer1`` … ``layer4``
    (a classifier, or a detection backbone's body)."""
    first = model.layer1[0]
    block = DynamicBottleneck if isinstance(first, torchvision.models.resnet.Bottleneck) else DynamicBasicBlock
    plain = getattr(first, "conv2").groups == 1 and (
        block is DynamicBasicBlock or first.conv1.out_channels * 4 == first.conv3.out_channels
    )
    if not plain:
        raise ValueError("only plain torchvision ResNets (resnet18..152) can be converted; "
                         "ResNeXt and wide ResNets are not supported")
    return block, [len(getattr(model, f"layer{i}")) for i in range(1, 5)]


def convert_resnet(model: torchvision.models.ResNet, **kwargs) -> DynamicResNet:
    """Dynamic copy of a torchvision ResNet holding all its weights unchanged."""
    block, layers = resnet_layout(model)
    dynamic = DynamicResNet(block, layers, num_classes=model.fc.out_features,
                            in_channels=model.conv1.in_channels, **kwargs)
    return from_static(dynamic, model)
