"""Datasets and loaders. Nothing is downloaded: every loader reads local files and says how
to get them when they are missing.

- ``cluttered``: the embedded default, a procedural and seeded "cluttered objects" set: one
  small object of one of eight shape classes at a random position on a larger noisy canvas
  strewn with distractor strokes, so that spatial skipping has something to skip;
- ``fashion-mnist``: the gzipped IDX files (Debian ``dataset-fashion-mnist``, torchvision's
  ``FashionMNIST/raw`` layout, or ``--data PATH``);
- ``fashion-mnist-placed``: each 28×28 item at a random position on a larger empty canvas;
- ``cifar10`` / ``cifar100``: torchvision's on-disk format, with the usual augmentations;
- ``imagefolder``: an ImageNet-style tree ``ROOT/train/CLASS/*.jpg`` and ``ROOT/val/...``.

Detection (torchvision's ``(image, target)`` format, batched by :func:`collate_detection`):
``ShapesDetection``, procedural scenes of several shapes with boxes and instance masks;
``CocoDetection``, an images folder with a COCO annotations file; :func:`write_coco` writes
a detection dataset's ground truth (and images) in COCO's format.

Datasets whose images hold one object know where it is: ``dataset.box(index)`` gives its
box ``(top, left, bottom, right)`` in pixels (bottom and right exclusive), which evaluation
uses to check that spatial masks fall on the object.
"""

from .build import DATASETS, DataInfo, DataSplits, build_datasets, has_boxes
from .cluttered import ClutteredObjects
from .coco import CocoDetection, write_coco
from .fashion_mnist import FashionMNIST, PlacedFashionMNIST
from .loaders import collate_detection, eval_loader, train_loader
from .shapes import ShapesDetection

__all__ = ["DATASETS", "ClutteredObjects", "CocoDetection", "DataInfo", "DataSplits", "FashionMNIST",
           "PlacedFashionMNIST", "ShapesDetection", "build_datasets", "collate_detection", "eval_loader",
           "has_boxes", "train_loader", "write_coco"]
