"""Dynamic backbones inside torchvision detectors (:mod:`.detectors`, :mod:`.backbone`)."""

from .backbone import convert_body
from .detectors import BUILDERS, DETECTORS, convert_detector, create_detector, list_detectors

__all__ = ["BUILDERS", "DETECTORS", "convert_body", "convert_detector", "create_detector", "list_detectors"]
