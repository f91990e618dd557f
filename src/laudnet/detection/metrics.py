"""COCO mAP of a detector on a detection dataset, computed by pycocotools' ``COCOeval``.

The ground truth is built from the dataset's targets as the detector runs (one pass, the
same path for the procedural :class:`~laudnet.data.shapes.ShapesDetection` and for
:class:`~laudnet.data.coco.CocoDetection`); images are numbered in dataset order and labels
are the category ids.
"""

from __future__ import annotations

import contextlib
import io
import math

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import checks
from ..data.coco import coco_mask, encode_masks, require_pycocotools, target_annotations
from ..data.loaders import collate_detection
from ..dynamic import dynamic_blocks, dynamic_networks, stats
from ..metrics import Totals, patch_overlap
from ..progress import progress_bar
from .detectors import transformed_batches
from .regions import cells, object_pixels

try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError:  # optional: require_pycocotools says what to install
    COCO = COCOeval = None

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six of ``COCOeval.stats``: AP over IoU 0.50:0.95, at IoU 0.50 and 0.75, and
over small, medium and large objects (all at 100 detections per image)."""

MASK_THRESHOLD = 0.5
"""Mask R-CNN's soft masks are binarised at this probability, as torchvision's references do."""


def _coco(data: dict) -> COCO:
    """A pycocotools ``COCO`` over ``data``, without its progress prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(output: dict[str, Tensor], image_id: int) -> list[dict]:
    """A detector's output for one image as COCO results (both a box and, with masks, an RLE)."""
    boxes = output["boxes"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    rles = [None] * len(boxes)
    if "masks" in output and boxes:
        masks = output["masks"].detach().cpu()
        rles = encode_masks((masks[:, 0] if masks.dim() == 4 else masks) > MASK_THRESHOLD)
    results = []
    for (x1, y1, x2, y2), score, label, rle in zip(boxes, scores, labels, rles):
        result = {"image_id": image_id, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        if rle is not None:
            result["segmentation"] = rle
        results.append(result)
    return results


def coco_eval(ground_truth: dict, detections: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """:data:`METRICS` of ``detections`` (COCO results) against ``ground_truth`` (a COCO dict)
    for ``iou_type`` ``"bbox"`` or ``"segm"``, as fractions; NaN where COCOeval has no
    ground truth to score (e.g. no large objects)."""
    require_pycocotools("COCO mAP")
    checks.choice("iou_type", iou_type, ("bbox", "segm"))
    results = []
    for i, detection in enumerate(detections, 1):
        x, y, w, h = detection["bbox"]
        area = float(coco_mask.area(detection["segmentation"])) if iou_type == "segm" else w * h
        results.append({**detection, "id": i, "area": area, "iscrowd": 0})
    gt = _coco(ground_truth)
    dt = _coco({"images": ground_truth["images"], "categories": ground_truth["categories"], "annotations": results})
    evaluator = COCOeval(gt, dt, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) if value >= 0 else math.nan for name, value in zip(METRICS, evaluator.stats)}


def box_overlap(model: nn.Module, boxes: list[Tensor]) -> dict[str, list[float]]:
    """:func:`~laudnet.metrics.patch_overlap` of a detector's backbone for each image's
    object ``boxes`` (``x1, y1, x2, y2`` in the resized image the backbone saw; the padded
    area counts as patches). A patch is on an object when its cell of the backbone's input
    holds a pixel of a box (:func:`~laudnet.detection.regions.cells`)."""
    on_object = object_pixels(boxes, tuple(dynamic_networks(model)[0].input_shape[-2:]))
    return patch_overlap(model, lambda block, rows, cols: cells(on_object, rows, cols))


def evaluate_detector(model: nn.Module, dataset: Dataset, batch_size: int = 2, workers: int = 0,
                      progress: bool = False) -> dict:
    """COCO mAP of ``model`` on ``dataset``: ``{"bbox": {"AP": …, "AP50": …, …}}`` and, when
    the model returns masks and the targets have them, ``"segm"`` too (see :func:`coco_eval`).
    For a detector with a dynamic backbone, ``"totals"`` holds the backbone's FLOPs,
    activation rates and where its spatial masks fall (a :class:`~laudnet.metrics.Totals`
    over the evaluated images; see :func:`box_overlap`).

    ``model`` is a torchvision-style detector in eval mode (a list of images in, a list of
    dicts with ``boxes``, ``scores``, ``labels`` and maybe ``masks`` out), run without
    gradients on the device of its parameters; ``dataset`` yields ``(image, target)`` in
    torchvision's detection format.
    """
    require_pycocotools("COCO mAP")
    batch_size = checks.positive_int("batch_size", batch_size)
    if model.training:
        raise ValueError("evaluate_detector needs the detector in eval mode (model.eval()); in train mode "
                         "torchvision's detectors return losses")
    device = next(model.parameters(), torch.empty(0)).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_detection)
    loader = progress_bar(loader, "evaluating", progress)
    dynamic = bool(dynamic_blocks(model))
    images, objects, detections = [], [], []
    totals = Totals()
    with_masks = True
    # the sizes the transform resized the images to place the boxes in the backbone's input
    with transformed_batches(model) if dynamic else contextlib.nullcontext([]) as resized, torch.no_grad():
        for batch, targets in loader:
            outputs = model([image.to(device) for image in batch])
            for image, target, output in zip(batch, targets, outputs):
                image_id = len(images) + 1
                images.append({"id": image_id, "height": image.shape[-2], "width": image.shape[-1]})
                objects += target_annotations(target, image_id, len(objects) + 1)
                detections += _detections(output, image_id)
                with_masks = with_masks and "masks" in target and "masks" in output
            if dynamic:
                boxes = [t["boxes"] * torch.tensor([w / i.shape[-1], h / i.shape[-2]] * 2)
                         for t, i, (h, w) in zip(targets, batch, resized[-1].sizes)]
                totals.add(stats(model), box_overlap(model, boxes))
    categories = [{"id": label} for label in sorted({a["category_id"] for a in objects})]
    ground_truth = {"images": images, "annotations": objects, "categories": categories}
    metrics: dict = {"bbox": coco_eval(ground_truth, detections, "bbox")}
    if with_masks:
        metrics["segm"] = coco_eval(ground_truth, detections, "segm")
    if dynamic:
        metrics["totals"] = totals
    return metrics
