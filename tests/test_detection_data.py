"""Detection data and metrics: the procedural shapes set, COCO files (reading, writing, their
errors) and COCO mAP of a detector."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

import laudnet
from laudnet.data import CocoDetection, ShapesDetection, collate_detection, write_coco
from laudnet.data import coco
from laudnet.detection import METRICS, evaluate_detector
from laudnet.errors import DataError, DependencyError

SMALL = {"size": (48, 80)}
"""Tiny canvases: fast, and their sizes still vary."""


# ----------------------------------------------------------------- procedural shapes
def test_shapes_are_deterministic_from_seed_and_index():
    a, b = ShapesDetection(4, **SMALL), ShapesDetection(4, **SMALL)
    for i in range(4):
        (image_a, target_a), (image_b, target_b) = a[i], b[i]
        assert torch.equal(image_a, image_b)
        assert target_a.keys() == target_b.keys()
        for key in ("boxes", "labels", "masks", "area", "iscrowd"):
            assert torch.equal(target_a[key], target_b[key])
    assert not torch.equal(ShapesDetection(4, seed=1, **SMALL)[0][0], a[0][0])


def test_shapes_targets_are_in_torchvision_detection_format():
    dataset = ShapesDetection(8, objects=(1, 6), **SMALL)
    counts = []
    for i in range(len(dataset)):
        image, target = dataset[i]
        _, height, width = image.shape
        n = len(target["labels"])
        counts.append(n)
        assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64
        assert ((target["labels"] >= 1) & (target["labels"] <= len(dataset.classes))).all()
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, height, width)
        assert target["image_id"] == i
        assert torch.equal(target["area"], target["masks"].sum((1, 2)).float())
        assert torch.equal(target["iscrowd"], torch.zeros(n, dtype=torch.int64))
        # each box is the tight box of its mask (x2, y2 exclusive)
        for box, mask in zip(target["boxes"].long().tolist(), target["masks"]):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert mask.sum() == mask[y1:y2, x1:x2].sum()
            inside = mask[y1:y2, x1:x2]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # shapes do not overlap
        assert target["masks"].sum(0).max() <= 1
    assert 1 <= min(counts) and max(counts) <= 6 and len(set(counts)) > 1


def test_shapes_vary_in_image_size_and_object_size():
    varied = ShapesDetection(6, **SMALL)
    assert len({tuple(varied[i][0].shape) for i in range(6)}) > 1
    assert {tuple(ShapesDetection(3, size=56)[i][0].shape) for i in range(3)} == {(3, 56, 56)}
    areas = torch.cat([target["area"] for _, target in ShapesDetection(12)])  # 256-800 px
    assert areas.min() < 32 ** 2 < 96 ** 2 < areas.max()  # COCO's small and large objects


@pytest.mark.parametrize("kwargs, message", [
    ({"length": 0}, "length must be at least 1"),
    ({"size": 16}, "size low must be at least 32"),
    ({"size": (80, 40)}, "low <= high"),
    ({"objects": (0, 3)}, "objects low must be at least 1"),
])
def test_shapes_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDetection(**{"length": 2, **kwargs})


def test_shapes_index_out_of_range():
    with pytest.raises(IndexError, match="index 3 out of range"):
        ShapesDetection(3, **SMALL)[3]


# ----------------------------------------------------------------- COCO files
def test_coco_round_trip_of_the_shapes_ground_truth(tmp_path):
    shapes = ShapesDetection(3, **SMALL)
    written = write_coco(shapes, tmp_path / "annotations.json", tmp_path / "images")
    assert written == json.loads((tmp_path / "annotations.json").read_text())
    assert [c["name"] for c in written["categories"]] == list(shapes.classes)
    loaded = CocoDetection(tmp_path / "images", tmp_path / "annotations.json")
    assert len(loaded) == 3 and loaded.classes == shapes.classes
    for i in range(3):
        (image, target), (read_image, read_target) = shapes[i], loaded[i]
        assert read_image.shape == image.shape and (read_image - image).abs().max() <= 0.5 / 255 + 1e-6
        for key in ("boxes", "labels", "masks", "area", "iscrowd"):
            assert torch.equal(read_target[key], target[key]), key
        assert read_target["image_id"] == target["image_id"]


def _polygon_file(tmp_path):
    """A 40x30 image and annotations with non-contiguous category ids, a polygon, an
    uncompressed RLE (a crowd), an empty box and an image without objects."""
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), (128, 128, 128)).save(tmp_path / "images" / name)
    crowd = np.zeros((30, 40), np.uint8)
    crowd[5:15, 20:30] = 1
    counts, pixels = [], crowd.flatten(order="F")  # column-major runs, starting with zeros
    value, run = 0, 0
    for pixel in pixels:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": 30, "width": 40},
                   {"id": 9, "file_name": "b.png", "height": 30, "width": 40}],
        "categories": [{"id": 17, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "bbox": [2, 4, 10, 8], "area": 80.0, "iscrowd": 0,
             "segmentation": [[2, 4, 12, 4, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [20, 5, 10, 10], "area": 100.0, "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": counts}},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [5, 5, 0, 4], "area": 0.0, "iscrowd": 0,
             "segmentation": []},
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    return tmp_path / "images", tmp_path / "annotations.json", crowd


def test_coco_loader_maps_categories_boxes_and_segmentations(tmp_path):
    images, annotations, crowd = _polygon_file(tmp_path)
    dataset = CocoDetection(images, annotations)
    assert dataset.classes == ("cat", "dog")
    assert dataset.label_to_category == {1: 3, 2: 17} and dataset.category_to_label == {3: 1, 17: 2}
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert target["image_id"] == 7
    assert target["boxes"].tolist() == [[2, 4, 12, 12], [20, 5, 30, 15]]  # the empty box is dropped
    assert target["labels"].tolist() == [2, 1]
    assert target["iscrowd"].tolist() == [0, 1] and target["area"].tolist() == [80, 100]
    assert target["masks"].shape == (2, 30, 40) and target["masks"].dtype == torch.uint8
    assert target["masks"][0, 4:12, 2:12].all() and target["masks"][0].sum() <= 11 * 9
    assert torch.equal(target["masks"][1], torch.from_numpy(crowd))
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 30, 40) and len(empty["labels"]) == 0
    # written back, the file keeps its category ids
    written = write_coco(dataset, tmp_path / "again.json")
    assert sorted((c["id"], c["name"]) for c in written["categories"]) == [(3, "cat"), (17, "dog")]
    assert [a["category_id"] for a in written["annotations"]] == [17, 3]
    assert written["annotations"][1]["bbox"] == [20, 5, 10, 10]


def test_coco_loader_boxes_only_without_masks(tmp_path, monkeypatch):
    images, annotations, _ = _polygon_file(tmp_path)
    monkeypatch.setattr(coco, "coco_mask", None)
    with pytest.raises(DependencyError, match="pip install"):
        CocoDetection(images, annotations)
    _, target = CocoDetection(images, annotations, masks=False)[0]
    assert "masks" not in target and target["labels"].tolist() == [2, 1]


def test_coco_loader_errors(tmp_path):
    images, annotations, _ = _polygon_file(tmp_path)
    with pytest.raises(DataError, match="annotations file .*missing.json not found"):
        CocoDetection(images, tmp_path / "missing.json")
    with pytest.raises(DataError, match="images folder .*nowhere does not exist"):
        CocoDetection(tmp_path / "nowhere", annotations)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json is not JSON"):
        CocoDetection(images, tmp_path / "bad.json")
    (tmp_path / "keys.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="lacks the list.s. annotations, categories"):
        CocoDetection(images, tmp_path / "keys.json")
    data = json.loads(annotations.read_text())
    data["images"].append({"id": 11, "file_name": "gone.png", "height": 30, "width": 40})
    annotations.write_text(json.dumps(data))
    with pytest.raises(DataError, match="1 image.s. listed .* missing .*gone.png"):
        CocoDetection(images, annotations)
    (images / "gone.png").write_bytes(b"not an image")
    dataset = CocoDetection(images, annotations)
    with pytest.raises(DataError, match="cannot decode image .*gone.png"):
        dataset[2]
    data["annotations"].append({"id": 4, "image_id": 7, "category_id": 5, "bbox": [0, 0, 1, 1], "segmentation": []})
    annotations.write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation 4 has category 5"):
        CocoDetection(images, annotations)


# ----------------------------------------------------------------- COCO mAP
class Replay(nn.Module):
    """A stand-in detector that returns given detections, one per image, in order."""

    def __init__(self, detections):
        super().__init__()
        self.detections, self.seen = detections, 0

    def forward(self, images):
        out = self.detections[self.seen:self.seen + len(images)]
        self.seen += len(images)
        return out


def _ground_truth_as_detections(dataset, shift=0.0, keep=None):
    detections = []
    for _, target in dataset:
        n = len(target["labels"]) if keep is None else min(keep, len(target["labels"]))
        detections.append({"boxes": target["boxes"][:n] + shift, "labels": target["labels"][:n],
                           "scores": torch.ones(n), "masks": target["masks"][:n, None].float()})
    return detections


def test_collate_detection_keeps_lists():
    dataset = ShapesDetection(3, **SMALL)
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert targets[1]["image_id"] == 1


def test_perfect_detections_score_ap_one():
    dataset = ShapesDetection(5, size=(128, 200))
    metrics = evaluate_detector(Replay(_ground_truth_as_detections(dataset)).eval(), dataset, batch_size=2)
    assert set(metrics) == {"bbox", "segm"}
    for kind in ("bbox", "segm"):
        assert tuple(metrics[kind]) == METRICS
        for name in ("AP", "AP50", "AP75"):
            assert metrics[kind][name] == pytest.approx(1.0), (kind, name)
        assert all(value == pytest.approx(1.0) or np.isnan(value) for value in metrics[kind].values())


def test_shifted_or_missing_detections_score_lower():
    dataset = ShapesDetection(5, size=(128, 200), objects=(2, 6))
    shifted = evaluate_detector(Replay(_ground_truth_as_detections(dataset, shift=4.0)).eval(), dataset)
    assert shifted["bbox"]["AP"] < 1.0 and shifted["bbox"]["AP75"] < shifted["bbox"]["AP50"] <= 1.0
    assert shifted["segm"]["AP"] == pytest.approx(1.0)  # the masks were not shifted
    missing = evaluate_detector(Replay(_ground_truth_as_detections(dataset, keep=1)).eval(), dataset)
    assert 0.0 < missing["bbox"]["AP"] < 1.0


def test_evaluate_detector_needs_eval_mode():
    dataset = ShapesDetection(2, **SMALL)
    with pytest.raises(ValueError, match="eval mode"):
        evaluate_detector(Replay(_ground_truth_as_detections(dataset)).train(), dataset)


def test_evaluate_a_dynamic_mask_rcnn():
    """The whole path on a converted detector with random weights: tiny images, metric keys."""
    torch.manual_seed(0)
    dataset = ShapesDetection(2, size=(64, 96))
    model = laudnet.detection.create_detector("maskrcnn_resnet50_fpn", paradigm="spatial",
                                              num_classes=len(dataset.classes) + 1,
                                              min_size=128, max_size=160).eval()
    metrics = evaluate_detector(model, dataset, batch_size=2)
    assert set(metrics) == {"bbox", "segm", "totals"}
    for kind in ("bbox", "segm"):
        assert tuple(metrics[kind]) == METRICS
        assert all(np.isnan(v) or 0.0 <= v <= 1.0 for v in metrics[kind].values())
    totals = metrics["totals"]  # the dynamic backbone's figures over the two images
    assert totals.samples == 2 and 0 < totals.flops_ratio < 1.2 and set(totals.rates) == {
        name for name, _ in laudnet.dynamic.dynamic_blocks(model)}
    assert 0 <= totals.object_share() <= 1 and 0 < totals.chance_share() < 1


def test_no_detections_score_zero_and_no_ground_truth_is_nan():
    dataset = ShapesDetection(2, **SMALL)
    nothing = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}] * 2
    metrics = evaluate_detector(Replay(nothing).eval(), dataset)
    assert set(metrics) == {"bbox"} and metrics["bbox"]["AP"] == 0.0  # no masks returned: no segm
    empty = [(torch.rand(3, 40, 40), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})]
    guesses = [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1]), "scores": torch.ones(1)}]
    assert all(np.isnan(v) for v in evaluate_detector(Replay(guesses).eval(), empty)["bbox"].values())


def test_coco_loader_names_a_wrong_image_size_and_a_missing_segmentation(tmp_path):
    images, annotations, _ = _polygon_file(tmp_path)
    data = json.loads(annotations.read_text())
    data["images"][0]["width"] = 41
    annotations.write_text(json.dumps(data))
    with pytest.raises(DataError, match="a.png is 40x30 but .* says 41x30"):
        CocoDetection(images, annotations)[0]
    del data["annotations"][0]["segmentation"]
    annotations.write_text(json.dumps(data))
    with pytest.raises(DataError, match="lacks segmentation"):
        CocoDetection(images, annotations)
    assert CocoDetection(images, annotations, masks=False)[1][1]["boxes"].shape == (0, 4)
