"""COCO-format detection data: :class:`CocoDetection` reads an images folder and a COCO
annotations file into torchvision's detection targets; :func:`write_coco` writes any
detection dataset's ground truth (and, if asked, its images) in that format, so that the
procedural :class:`~laudnet.data.shapes.ShapesDetection` and COCO share one evaluation path.

Masks are run-length encoded and decoded with ``pycocotools``, an optional dependency
(``pip install "laudnet[detection]"``); without it, only boxes can be read (``masks=False``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from ..errors import DataError, DependencyError
from ..outputs import check_directory, check_file
from .folders import decode_image

try:
    from pycocotools import mask as coco_mask
except ImportError:  # optional: boxes work without it
    coco_mask = None

REQUIRED_KEYS = ("images", "annotations", "categories")
"""Top-level keys of a COCO annotations file."""


def require_pycocotools(purpose: str) -> None:
    """Raise :class:`DependencyError` saying what to install when ``pycocotools`` is missing."""
    if coco_mask is None:
        raise DependencyError(f"{purpose} needs pycocotools: pip install \"pycocotools>=2.0.8\" "
                              "(or pip install \"laudnet[detection]\")")


def read_annotations(path: str | Path) -> dict:
    """The COCO annotations file ``path`` as a dict, or :class:`DataError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotations file {path} not found; give the annotations JSON of the images "
                        "folder (e.g. annotations/instances_val2017.json)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not JSON ({error}); expected a COCO annotations file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not a COCO annotations object with keys "
                        f"{', '.join(REQUIRED_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if not isinstance(data.get(key), list)]
    if missing:
        raise DataError(f"{path} is not a COCO annotations file: it lacks the list(s) {', '.join(missing)} "
                        f"(a COCO file has {', '.join(REQUIRED_KEYS)})")
    return data


def _check_entries(entries: list, keys: tuple[str, ...], what: str, path: Path) -> None:
    for entry in entries:
        missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise DataError(f"{path}: an entry of {what} lacks {', '.join(missing)}: {str(entry)[:200]}")


def segmentation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a ``(height, width)``
    uint8 mask."""
    require_pycocotools("COCO segmentation masks")
    if isinstance(segmentation, list):  # polygons
        if not segmentation:
            return np.zeros((height, width), np.uint8)
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return coco_mask.decode(rle)


class CocoDetection(Dataset):
    """The images of folder ``images`` with the annotations of the COCO file ``annotations``.

    Items are ``(image, target)`` in torchvision's detection format, as
    :class:`~laudnet.data.shapes.ShapesDetection`'s: ``image`` a ``(3, H, W)`` float tensor
    in [0, 1]; ``target`` with ``boxes`` (float ``(N, 4)`` ``x1, y1, x2, y2``, from COCO's
    ``x, y, w, h``, clipped to the image), ``labels`` (int64: category ids mapped to
    ``1 … K`` in the order of the ids; :attr:`label_to_category` keeps the mapping,
    :attr:`classes` the names), ``masks`` (uint8 ``(N, H, W)``, with ``masks=True``),
    ``image_id`` (COCO's), ``area`` (the annotation's) and ``iscrowd`` (crowd regions are
    kept and flagged). Annotations whose box is empty after clipping are dropped, as
    torchvision's reference scripts do. Unlike ``torchvision.datasets.CocoDetection``, which
    returns the raw annotations, targets are ready for a detector and for :func:`evaluate_detector
    <laudnet.detection.evaluate_detector>`.
    """

    def __init__(self, images: str | Path, annotations: str | Path, masks: bool = True) -> None:
        self.root, self.annotations_path, self.masks = Path(images), Path(annotations), masks
        if not self.root.is_dir():
            raise DataError(f"images folder {self.root} does not exist or is not a directory")
        if masks:
            require_pycocotools("Reading COCO masks (masks=True)")
        data = read_annotations(self.annotations_path)
        path = self.annotations_path
        _check_entries(data["images"], ("id", "file_name"), "images", path)
        _check_entries(data["categories"], ("id", "name"), "categories", path)
        _check_entries(data["annotations"], ("image_id", "category_id", "bbox") + (("segmentation",) if masks else ()),
                       "annotations (masks=False reads boxes alone)" if masks else "annotations", path)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.classes: tuple[str, ...] = tuple(c["name"] for c in categories)
        self.label_to_category: dict[int, int] = {label: c["id"] for label, c in enumerate(categories, 1)}
        self.category_to_label: dict[int, int] = {c: label for label, c in self.label_to_category.items()}
        self.images: list[dict] = list(data["images"])
        missing = [e["file_name"] for e in self.images if not (self.root / e["file_name"]).is_file()]
        if missing:
            raise DataError(f"{len(missing)} image(s) listed in {path} are missing from {self.root}, "
                            f"e.g. {self.root / missing[0]}")
        self._annotations: dict[int, list[dict]] = {e["id"]: [] for e in self.images}
        for annotation in data["annotations"]:
            if annotation["image_id"] not in self._annotations:
                raise DataError(f"{path}: annotation {annotation.get('id')} names image {annotation['image_id']}, "
                                "which the file does not list")
            if annotation["category_id"] not in self.category_to_label:
                raise DataError(f"{path}: annotation {annotation.get('id')} has category {annotation['category_id']}; "
                                f"the file's categories are {sorted(self.category_to_label)}")
            self._annotations[annotation["image_id"]].append(annotation)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        entry = self.images[index]
        path = self.root / entry["file_name"]
        image = pil_to_tensor(decode_image(str(path))).float().div_(255)
        height, width = image.shape[-2:]
        if (entry.get("height", height), entry.get("width", width)) != (height, width):
            raise DataError(f"image {path} is {width}x{height} but {self.annotations_path} says "
                            f"{entry.get('width', width)}x{entry.get('height', height)}")
        annotations = self._annotations[entry["id"]]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
        annotations = [a for a, k in zip(annotations, keep) if k]
        target = {
            "boxes": boxes[keep],
            "labels": torch.tensor([self.category_to_label[a["category_id"]] for a in annotations], dtype=torch.int64),
            "image_id": entry["id"],
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in annotations],
                                 dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in annotations], dtype=torch.int64),
        }
        if self.masks:
            masks = [segmentation_mask(a["segmentation"], height, width) for a in annotations]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width,
                                                                                          dtype=torch.uint8)
        return image, target


def encode_masks(masks: Tensor) -> list[dict]:
    """Binary masks ``(N, H, W)`` as COCO compressed RLEs (``counts`` a string, for JSON)."""
    require_pycocotools("Encoding masks as COCO RLE")
    array = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).numpy())
    rles = coco_mask.encode(array)
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


def target_annotations(target: Mapping[str, Tensor], image_id: int, first_id: int = 1,
                       category_ids: Mapping[int, int] | None = None) -> list[dict]:
    """The objects of a detection ``target`` as COCO annotations of image ``image_id``, with
    ids from ``first_id``; labels become ``category_ids[label]`` (the label itself if
    ``None``); masks, when the target has them, become RLE segmentations."""
    boxes = target["boxes"].tolist()
    labels = target["labels"].tolist()
    areas = target["area"].tolist() if "area" in target else [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
    crowd = target["iscrowd"].tolist() if "iscrowd" in target else [0] * len(boxes)
    segmentations = encode_masks(target["masks"]) if "masks" in target and len(boxes) else [None] * len(boxes)
    annotations = []
    for i, ((x1, y1, x2, y2), label, area, iscrowd, rle) in enumerate(zip(boxes, labels, areas, crowd, segmentations)):
        annotation = {"id": first_id + i, "image_id": image_id,
                      "category_id": category_ids[label] if category_ids is not None else label,
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": iscrowd}
        if rle is not None:
            annotation["segmentation"] = rle
        annotations.append(annotation)
    return annotations


def write_coco(dataset: Dataset, annotations: str | Path, images: str | Path | None = None) -> dict:
    """Write the ground truth of detection ``dataset`` as the COCO file ``annotations`` and,
    with ``images``, its images as PNG files into that folder; return the COCO dict.

    Images are named by their ``image_id`` (``000000000042.png``). Category names come from
    ``dataset.classes`` and ids from ``dataset.label_to_category`` when it has them (a
    :class:`CocoDetection` keeps its ids), else labels are the ids.
    """
    annotations = check_file(annotations, "annotations")
    if images is not None:
        images = check_directory(images, "images")
        images.mkdir(parents=True, exist_ok=True)
    category_ids = getattr(dataset, "label_to_category", None)
    classes = getattr(dataset, "classes", None)
    entries, objects, labels = [], [], set()
    for index in range(len(dataset)):
        image, target = dataset[index]
        image_id = int(target.get("image_id", index))
        height, width = image.shape[-2:]
        entry = {"id": image_id, "file_name": f"{image_id:012d}.png", "height": height, "width": width}
        entries.append(entry)
        objects += target_annotations(target, image_id, len(objects) + 1, category_ids)
        labels.update(target["labels"].tolist())
        if images is not None:
            pixels = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(images / entry["file_name"])
    if classes is None:
        classes = tuple(str(label) for label in range(1, max(labels, default=0) + 1))
    categories = [{"id": category_ids[label] if category_ids is not None else label, "name": name}
                  for label, name in enumerate(classes, 1)]
    data = {"images": entries, "annotations": objects, "categories": categories}
    annotations.parent.mkdir(parents=True, exist_ok=True)
    annotations.write_text(json.dumps(data))
    return data
