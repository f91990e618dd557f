"""Dynamic model builders, the registry and conversion from torchvision."""

from __future__ import annotations

import torchvision
from torch import nn

from .base import DynamicNetwork
from .registry import create_model, list_models, register_model
from .mobilenet import DynamicMobileNetV2, convert_mobilenet_v2
from .regnet import DynamicRegNet, convert_regnet
from .resnet import DynamicResNet, convert_resnet


CLASSIFIERS = (torchvision.models.ResNet, torchvision.models.RegNet, torchvision.models.MobileNetV2)
"""torchvision classifiers :func:`convert` takes."""


def convert(model: nn.Module, **kwargs) -> DynamicNetwork:
    """Dynamic copy of a torchvision model, all its weights unchanged.

    Keyword arguments are those of the dynamic model (``paradigm``, ``granularity``,
    ``gate_scale``, ``input_size``). With every gate open the copy computes the same
    function as ``model``.
    """
    if isinstance(model, torchvision.models.ResNet):
        return convert_resnet(model, **kwargs)
    if isinstance(model, torchvision.models.RegNet):
        return convert_regnet(model, **kwargs)
    if isinstance(model, torchvision.models.MobileNetV2):
        return convert_mobilenet_v2(model, **kwargs)
    raise ValueError(f"cannot convert {type(model).__name__}; supported: torchvision ResNet, RegNet, MobileNetV2")


__all__ = ["CLASSIFIERS", "DynamicMobileNetV2", "DynamicNetwork", "DynamicRegNet", "DynamicResNet", "convert",
           "create_model", "list_models", "register_model"]
