"""torchvision detectors whose ResNet-FPN backbone is dynamic.

:func:`convert_detector` returns a copy of a torchvision detector (Faster / Mask /
Keypoint R-CNN, RetinaNet, FCOS) on a ResNet-FPN backbone in which ``backbone.body`` is a
:class:`~laudnet.models.DynamicResNet` holding the body's weights; the transform, the FPN
and the heads are the detector's, untouched. :func:`create_detector` builds torchvision's
detector from scratch and converts it. ``laudnet.set_execution``, ``set_decisions`` and
``stats`` work on the detector as on a classifier; ``stats`` counts the body.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, NamedTuple

from torch import Tensor, nn
from torchvision.models import detection, resnet18
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .. import checks
from ..config import GranularitySpec, ParadigmSpec
from ..models.resnet import DynamicResNet
from .backbone import convert_body

DETECTORS = (GeneralizedRCNN, detection.RetinaNet, detection.FCOS)
"""Detector classes whose ResNet-FPN backbone can be made dynamic (Faster, Mask and
Keypoint R-CNN are ``GeneralizedRCNN``)."""

LIGHT_SAMPLING = {"rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500,
                  "rpn_post_nms_top_n_test": 300, "box_batch_size_per_image": 128}
"""Proposals kept before / after non-maximum suppression and regions sampled per image
for the box head: a quarter of torchvision's (for COCO's 80 classes) suits a few objects
per image."""


def fasterrcnn_resnet18_fpn(*, weights: None = None, weights_backbone: None = None, num_classes: int = 91,
                            fpn_channels: int = 128, **kwargs) -> detection.FasterRCNN:
    """A light Faster R-CNN for CPUs and small images: a ResNet-18 body whose strides 8,
    16 and 32 feed an FPN of ``fpn_channels`` (plus a max-pooled level), with anchors of
    16-128 pixels, one size per level, and fewer proposals and sampled regions than
    torchvision's defaults (:data:`LIGHT_SAMPLING`). torchvision's ResNet-50-FPN spends most
    of its time at stride 4 and in 256-channel heads; this one trains in about a second per
    256-pixel image on one core of a Zen 3 server CPU. Built without weights; other keyword
    arguments go to ``FasterRCNN`` (``min_size``, ``max_size``, sampling sizes, ...)."""
    if weights is not None or weights_backbone is not None:
        raise ValueError("fasterrcnn_resnet18_fpn has no published weights; build it with weights=None")
    kwargs = {**LIGHT_SAMPLING, **kwargs}
    body = resnet18(weights=None)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512],
                               fpn_channels, extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)
    return detection.FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors,
                                box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2), **kwargs)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    builder.__name__: builder for builder in (
        fasterrcnn_resnet18_fpn,
        detection.fasterrcnn_resnet50_fpn, detection.fasterrcnn_resnet50_fpn_v2,
        detection.maskrcnn_resnet50_fpn, detection.maskrcnn_resnet50_fpn_v2,
        detection.keypointrcnn_resnet50_fpn, detection.retinanet_resnet50_fpn,
        detection.retinanet_resnet50_fpn_v2, detection.fcos_resnet50_fpn,
    )
}
"""torchvision's builders of detectors on a ResNet-FPN backbone, by name."""


def max_size(min_size: int) -> int:
    """The longest side a detector's transform allows for images resized to a short side of
    ``min_size``: torchvision's ratio (1333 for 800)."""
    return round(min_size * 5 / 3)


class Transformed(NamedTuple):
    """What a detector's transform made of one batch: the ``(h, w)`` each image was resized
    to before the batch was padded, and each image's resized ``(n, 4)`` target boxes
    (``None`` when the transform got no targets, in eval mode)."""

    sizes: list[tuple[int, int]]
    boxes: list[Tensor] | None


@contextlib.contextmanager
def transformed_batches(detector: nn.Module) -> Iterator[list[Transformed]]:
    """Within the block, the list receives a :class:`Transformed` for every call of
    ``detector``'s transform."""
    batches: list[Transformed] = []

    def record(transform: nn.Module, args: tuple, output: tuple) -> None:
        images, targets = output
        boxes = None if targets is None else [target["boxes"] for target in targets]
        batches.append(Transformed([tuple(size) for size in images.image_sizes], boxes))

    hook = detector.transform.register_forward_hook(record)
    try:
        yield batches
    finally:
        hook.remove()


class ImageSizes:
    """Forward hook of a detector's transform: tells the dynamic body the unpadded size of
    each image of the batch it is about to see, so that its spatial gates skip the padding
    (:mod:`laudnet.blocks.padding`). An object rather than a closure, so that a deep copy of
    the detector tells its own body."""

    def __init__(self, body: DynamicResNet) -> None:
        self.body = body

    def __call__(self, transform: nn.Module, args: tuple, output: tuple) -> None:
        self.body.image_sizes = [tuple(size) for size in output[0].image_sizes]


def convert_detector(detector: nn.Module, skip_padding: bool = True, **kwargs) -> nn.Module:
    """Copy of ``detector`` whose backbone body is dynamic, all weights unchanged.

    Keyword arguments are those of the dynamic network (``paradigm``, ``granularity``,
    ``gate_scale``, ``input_size``; ``input_size`` defaults to the transform's smallest
    ``min_size``, the nominal side of the images the body sees). In static execution, and
    with every gate open, the copy computes the same detections as ``detector``, except
    that with ``skip_padding`` (the default) the spatial gates never compute the area the
    transform pads a batch of images of different sizes with: the features next to that
    area then differ slightly from torchvision's (which computes it); a single image, or
    one batch of one size, gives the same detections either way.
    """
    checks.flag("skip_padding", skip_padding)
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
    converted = copy.deepcopy(detector, memo={id(backbone.body): body})
    if skip_padding:
        converted.transform.register_forward_hook(ImageSizes(body))
    return converted


def list_detectors() -> list[str]:
    """Names :func:`create_detector` accepts, sorted."""
    return sorted(BUILDERS)


def create_detector(name: str, paradigm: ParadigmSpec = "spatial", granularity: GranularitySpec = None,
                    gate_scale: bool = False, input_size: int | None = None, skip_padding: bool = True,
                    **kwargs) -> nn.Module:
    """torchvision's detector ``name`` built from scratch (no weights), its backbone body
    dynamic, e.g. ``create_detector("fasterrcnn_resnet50_fpn", paradigm="spatial",
    num_classes=3)``.

    ``paradigm``, ``granularity``, ``gate_scale``, ``input_size`` and ``skip_padding`` are
    as in :func:`convert_detector`; every other keyword argument goes to
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
    return convert_detector(detector, skip_padding, paradigm=paradigm, granularity=granularity,
                            gate_scale=gate_scale, input_size=input_size)
