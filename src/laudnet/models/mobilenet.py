"""Dynamic MobileNetV2 in torchvision's layout (``features``, ``classifier``).

Stages are the rows ``(t, c, n, s)`` of the inverted-residual setting: torchvision's has
seven, with output maps of 112, 56, 28, 14, 14, 7 and 7 pixels at 224×224:

======  ====  ====  ===  ===  ==============================
stage   t     c     n    s    dynamic blocks (``features.i``)
======  ====  ====  ===  ===  ==============================
1       1     16    1    1    none
2       6     24    2    2    3
3       6     32    3    2    5, 6
4       6     64    4    2    8, 9, 10
5       6     96    3    1    12, 13
6       6     160   3    2    15, 16
7       6     320   1    1    none
======  ====  ====  ===  ===  ==============================

Only inverted residuals with a residual connection (all but the first block of a row,
unless the row keeps stride 1 and width) become dynamic; the others stay torchvision's
static ``InvertedResidual``. A stage without residual blocks is static (``none``): a
single paradigm word leaves it so, a per-stage spec must say ``none`` for it.

Default granularity: channel, 8 expanded channels per group; spatial, 4 on the 56×56 and
28×28 maps, 2 on the 14×14 maps and 1 on the 7×7 one, as ResNet's 4-4-2-1 (capped at the
map side). A custom setting with another number of rows defaults to 2 and 8 in every stage.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import _make_divisible
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from ..blocks.mobilenet import DynamicInvertedResidual
from ..config import GranularitySpec, ParadigmSpec, parse_paradigm, stage_configs
from .base import DynamicNetwork, check_arguments, feature_sizes, initialise
from .registry import register_model
from .weights import from_static

SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
"""torchvision's inverted-residual setting: expansion t, channels c, blocks n, first stride s."""

DEFAULT_GRANULARITY = {"spatial": (4, 4, 4, 2, 2, 1, 1), "channel": (8,) * 7}
CUSTOM_GRANULARITY = {"spatial": 2, "channel": 8}  # for settings with another number of rows


class DynamicMobileNetV2(DynamicNetwork):
    """MobileNetV2 whose residual inverted-residual blocks skip patches, expanded channel
    groups or whole blocks per input.

    Args:
        paradigm: per-stage paradigm spec (seven stages for torchvision's setting).
        granularity: per-stage S or G; ``None`` takes the defaults (module docstring).
        num_classes: classifier outputs.
        width_mult, inverted_residual_setting, round_nearest, dropout: as torchvision's.
        stem_width, last_channel: widths of the first and last convolutions before the
            width multiplier (torchvision's 32 and 1280).
        input_size: nominal input side, used to check that S fits the feature maps.
        gate_scale: learned output scale of kept channel groups / blocks (LC-Net).
    """

    def __init__(
        self,
        paradigm: ParadigmSpec = "spatial",
        granularity: GranularitySpec = None,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        inverted_residual_setting: Sequence[Sequence[int]] | None = None,
        round_nearest: int = 8,
        dropout: float = 0.2,
        stem_width: int = 32,
        last_channel: int = 1280,
        input_size: int | None = None,
        gate_scale: bool = False,
    ) -> None:
        super().__init__()
        check_arguments(num_classes, input_size, gate_scale)
        setting = [list(row) for row in (inverted_residual_setting or SETTING)]
        if not setting or any(len(row) != 4 for row in setting):
            raise ValueError(f"inverted_residual_setting must be a non-empty list of [t, c, n, s] rows, got {setting}")
        input_channel = _make_divisible(stem_width * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)

        stages = _stage_blocks(setting, input_channel, width_mult, round_nearest)
        residual = [any(_is_residual(block) for block in blocks) for blocks in stages]
        hidden = [int(round(blocks[-1][1] * blocks[-1][3])) for blocks in stages]  # expanded width of a residual block
        sizes = feature_sizes(math.ceil((input_size or 224) / 2), [row[3] for row in setting])
        defaults = {kind: values if len(setting) == len(SETTING) else [CUSTOM_GRANULARITY[kind]] * len(setting)
                    for kind, values in DEFAULT_GRANULARITY.items()}
        defaults["spatial"] = [min(s, size) for s, size in zip(defaults["spatial"], sizes)]
        self.stage_configs = stage_configs(_stage_words(paradigm, residual), granularity, sizes, hidden,
                                           defaults)

        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2, activation_layer=nn.ReLU6)]
        self._stage_bounds = []
        for blocks, config in zip(stages, self.stage_configs):
            start = len(features)
            for block in blocks:
                if _is_residual(block):
                    features.append(DynamicInvertedResidual(*block, config=config, gate_scale=gate_scale))
                    features[-1].reuse_input = True  # nothing reads its input afterwards
                else:
                    features.append(InvertedResidual(*block))
            self._stage_bounds.append((start, len(features)))
        width = stages[-1][-1][1]
        features.append(Conv2dNormActivation(width, self.last_channel, kernel_size=1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        initialise(self, _init_module)

    def stages(self) -> list[nn.Sequential]:
        """The blocks of each stage (views into ``features``)."""
        return [self.features[start:end] for start, end in self._stage_bounds]

    def named_stages(self) -> list[tuple[str, nn.Sequential]]:
        """Each stage named by the index in ``features`` of its last layer (the name
        ``IntermediateLayerGetter`` gives it over ``features``)."""
        return [(str(end - 1), stage) for (_, end), stage in zip(self._stage_bounds, self.stages())]

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.static_layers.run((self.features[0],), x) if self.sparse_inference else self.features[0](x)

    def run_stage(self, stage: nn.Module, x: Tensor) -> Tensor:
        if self.sparse_inference:  # as forward: the layers without gates packed
            for layer in stage:
                x = layer(x) if isinstance(layer, DynamicInvertedResidual) else self.static_layers.run((layer,), x)
            return x
        return stage(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.sparse_inference:  # the layers without gates on the engine's packed kernels
            for layer in self.features:
                x = layer(x) if isinstance(layer, DynamicInvertedResidual) else self.static_layers.run((layer,), x)
        else:
            x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _init_module(m: nn.Module) -> None:
    """torchvision's MobileNetV2 initialisation."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        nn.init.zeros_(m.bias)


def _stage_blocks(setting: list[list[int]], input_channel: int, width_mult: float,
                  round_nearest: int) -> list[list[tuple[int, int, int, int]]]:
    """``(inp, oup, stride, t)`` of every block, per stage, as torchvision builds them."""
    stages = []
    for t, c, n, s in setting:
        out = _make_divisible(c * width_mult, round_nearest)
        stages.append([(input_channel if i == 0 else out, out, s if i == 0 else 1, t) for i in range(n)])
        input_channel = out
    return stages


def _is_residual(block: tuple[int, int, int, int]) -> bool:
    inp, oup, stride, _ = block
    return stride == 1 and inp == oup


def _stage_words(paradigm: ParadigmSpec, residual: list[bool]) -> list[str]:
    """Per-stage paradigms; stages without a residual block are ``none``, which a
    per-stage spec must say (a single word applies to the stages that can use it)."""
    words = parse_paradigm(paradigm, len(residual))
    single = len(paradigm.split("-") if isinstance(paradigm, str) else list(paradigm)) == 1
    for stage, (word, has_residual) in enumerate(zip(words, residual), start=1):
        if not has_residual and word != "none" and not single:
            raise ValueError(f"stage {stage} of MobileNetV2 has no residual block; its paradigm must be "
                             f"'none', got {word!r}")
    return [word if has_residual else "none" for word, has_residual in zip(words, residual)]


@register_model
def mobilenet_v2(**kwargs) -> DynamicMobileNetV2:
    """Dynamic MobileNetV2 (torchvision layout); keyword arguments as ``DynamicMobileNetV2``."""
    return DynamicMobileNetV2(**kwargs)


def convert_mobilenet_v2(model: torchvision.models.MobileNetV2, **kwargs) -> DynamicMobileNetV2:
    """Dynamic copy of a torchvision MobileNetV2 holding all its weights unchanged.

    The inverted-residual setting is read off the blocks (any width multiplier); a row
    starts where the stride or the width changes, which gives torchvision's seven stages.
    """
    blocks = list(model.features)[1:-1]
    if not all(isinstance(b, InvertedResidual) for b in blocks) or \
            any(type(m) is not nn.BatchNorm2d for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        raise ValueError("only MobileNetV2 models built of torchvision's InvertedResidual blocks with "
                         "BatchNorm2d can be converted")
    setting: list[list[int]] = []
    for block in blocks:
        inp, oup = block.conv[0][0].in_channels, block.out_channels
        hidden = block.conv[-2].in_channels
        t = hidden // inp
        if setting and block.stride == 1 and inp == oup and setting[-1][:2] == [t, oup]:
            setting[-1][2] += 1
        else:
            setting.append([t, oup, 1, block.stride])
    dynamic = DynamicMobileNetV2(
        num_classes=model.classifier[-1].out_features, inverted_residual_setting=setting, round_nearest=1,
        dropout=model.classifier[0].p, stem_width=model.features[0][0].out_channels,
        last_channel=model.features[-1][0].out_channels, **kwargs)
    return from_static(dynamic, model)
