"""``laudnet.convert``: torchvision classifiers and detectors made dynamic, weights unchanged."""

from __future__ import annotations

from torch import nn

from . import models
from .detection import DETECTORS, convert_detector


def convert(model: nn.Module, **kwargs) -> nn.Module:
    """Dynamic copy of a torchvision model, all its weights unchanged.

    - a classifier (ResNet, RegNet, MobileNetV2): the dynamic network
      (:func:`laudnet.models.convert`);
    - a detector on a ResNet-FPN backbone (Faster / Mask / Keypoint R-CNN, RetinaNet,
      FCOS): the same detector whose ``backbone.body`` is a dynamic ResNet
      (:func:`laudnet.detection.convert_detector`).

    Keyword arguments are those of the dynamic network (``paradigm``, ``granularity``,
    ``gate_scale``, ``input_size``). With every gate open the copy computes the same
    function as ``model``.
    """
    if isinstance(model, DETECTORS):
        return convert_detector(model, **kwargs)
    if isinstance(model, models.CLASSIFIERS):
        return models.convert(model, **kwargs)
    classifiers = ", ".join(cls.__name__ for cls in models.CLASSIFIERS)
    detectors = ", ".join(cls.__name__ for cls in DETECTORS)
    raise ValueError(f"cannot convert {type(model).__name__}; supported: torchvision {classifiers} "
                     f"classifiers and {detectors} detectors on a ResNet-FPN backbone")
