"""torchvision detectors whose ResNet-FPN backbone is dynamic.

:func:`convert_detector` returns a copy of a torchvision detector (Faster / Mask /
Keypoint R-CNN, RetinaNet, FCOS) on a ResNet-FPN backbone in which ``backbone.body`` is a
:class:`~laudnet.models.DynamicResNet` holding the body's weights; the transform, the FPN
and the heads are the detector's, untouched. :func:`create_detector` builds torchvision's
detector from scratch and converts it. ``laudnet.set_execution``, ``set_decisions`` and
``stats`` work on the detector as on a classifier; ``stats`` counts the body.
"""

from __future__ import annotations

import copy
from typing import Callable

from torch import nn
from torchvision.models import detection
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from .. import checks
from ..config import GranularitySpec, ParadigmSpec
from .backbone import convert_body

DETECTORS = (GeneralizedRCNN, detection.RetinaNet, detection.FCOS)
"""Detector classes whose ResNet-FPN backbone can be made dynamic (Faster, Mask and
Keypoint R-CNN are ``GeneralizedRCNN``)."""

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    builder.__name__: builder for builder in (
        detection.fasterrcnn_resnet50_fpn, detection.fasterrcnn_resnet50_fpn_v2,
        detection.maskrcnn_resnet50_fpn, detection.maskrcnn_resnet50_fpn_v2,
        detection.keypointrcnn_resnet50_fpn, detection.retinanet_resnet50_fpn,
        detection.retinanet_resnet50_fpn_v2, detection.fcos_resnet50_fpn,
    )
}
"""torchvision's builders of detectors on a ResNet-FPN backbone, by name."""


def convert_detector(detector: nn.Module, **kwargs) -> nn.Module:
    """Copy of ``detector`` whose backbone body is dynamic, all weights unchanged.

    Keyword arguments are those of the dynamic network (``paradigm``, ``granularity``,
    ``gate_scale``, ``input_size``; ``input_size`` defaults to the transform's smallest
    ``min_size``, the nominal side of the images the body sees). With every gate open the
    copy computes the same detections as ``detector``.
    """
    if not isinstance(detector, DETECTORS):
        allowed = ", ".join(cls.__name__ for cls in DETECTORS)
        raise ValueError(f"cannot convert {type(detector).__name__} as a detector; supported: torchvision {allowed}")
    backbone = getattr(detector, "backbone", None)
    if not isinstance(backbone, BackboneWithFPN):
        raise ValueError(f"cannot convert {type(detector).__name__} with a {type(backbone).__name__} backbone; "
                         "supported: BackboneWithFPN over a ResNet (resnet_fpn_backbone)")
    if kwargs.get("input_size") is None:
        kwargs["input_size"] = min(detector.transform.min_size)
    body = convert_body(backbone.body, **kwargs)
    # copy everything but the body, which the memo maps to its dynamic replacement
    return copy.deepcopy(detector, memo={id(backbone.body): body})


def list_detectors() -> list[str]:
    """Names :func:`create_detector` accepts, sorted."""
    return sorted(BUILDERS)


def create_detector(name: str, paradigm: ParadigmSpec = "spatial", granularity: GranularitySpec = None,
                    gate_scale: bool = False,
                    input_size: int | None = None, **kwargs) -> nn.Module:
    """torchvision's detector ``name`` built from scratch (no weights), its backbone body
    dynamic, e.g. ``create_detector("fasterrcnn_resnet50_fpn", paradigm="spatial",
    num_classes=3)``.

    ``paradigm``, ``granularity``, ``gate_scale`` and ``input_size`` are the dynamic
    network's (see :func:`convert_detector`); every other keyword argument goes to
    torchvision's builder (``num_classes``, ``min_size``, ``max_size``, ...). For
    pretrained weights, build torchvision's detector with them and ``laudnet.convert`` it.
    """
    checks.choice("detector", name, list_detectors())
    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:
            raise ValueError(f"create_detector builds {name} without weights, got {key}={kwargs[key]!r}; "
                             f"for pretrained weights build torchvision's {name} with them and laudnet.convert it")
        kwargs[key] = None
    detector = BUILDERS[name](**kwargs)
    return convert_detector(detector, paradigm=paradigm, granularity=granularity, gate_scale=gate_scale,
                            input_size=input_size)
