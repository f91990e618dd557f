"""Detection data and metrics: the procedural shapes set, COCO files (reading, writing, their
errors) and COCO mAP of a detector."""

import pytest
import torch

from laudnet.data import ShapesDetection

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
