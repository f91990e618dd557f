"""Dynamic backbones inside torchvision detectors (:mod:`.detectors`, :mod:`.backbone`) and
their COCO mAP (:mod:`.metrics`)."""

from .backbone import convert_body
from .detectors import BUILDERS, DETECTORS, convert_detector, create_detector, list_detectors
from .metrics import METRICS, coco_eval, evaluate_detector

__all__ = ["BUILDERS", "DETECTORS", "METRICS", "coco_eval", "convert_body", "convert_detector", "create_detector",
           "evaluate_detector", "list_detectors"]
