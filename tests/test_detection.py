"""Stage features of dynamic networks, and torchvision detectors with a dynamic ResNet body:
exact conversion, masked == sparse inside a detector, statistics, errors."""

import pytest
import torch
import torchvision
from torchvision.models import detection
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

import laudnet
from laudnet.blocks.resnet import DynamicBasicBlock
from laudnet.dynamic import dynamic_blocks
from laudnet.models import DynamicResNet

from conftest import assert_close_to_scale, randomize_norms

SMALL = {"num_classes": 3, "min_size": 128, "max_size": 160}
"""Detector keyword arguments: small images, few classes (random scores pass the threshold)."""


def _images():
    """Two images of different sizes: the transform resizes and pads them into one batch."""
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 120, 150, generator=generator), torch.rand(3, 90, 100, generator=generator)]


# ----------------------------------------------------------------- stage features
@pytest.mark.parametrize("arch, reference, paradigm", [
    ("resnet18", lambda m: IntermediateLayerGetter(m, {f"layer{i}": f"layer{i}" for i in range(1, 5)}),
     "spatial-channel-layer-layer+spatial"),
    ("regnet_y_400mf", lambda m: create_feature_extractor(
        m, {f"trunk_output.block{i}": f"block{i}" for i in range(1, 5)}), "channel-spatial-layer-spatial"),
    ("mobilenet_v2", lambda m: IntermediateLayerGetter(
        m.features, {k: k for k in ("1", "3", "6", "10", "13", "16", "17")}), "spatial"),
])
def test_features_equal_torchvision_stage_outputs(arch, reference, paradigm):
    static = randomize_norms(getattr(torchvision.models, arch)()).eval()
    model = laudnet.convert(static, paradigm=paradigm, input_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(static)(x)
        laudnet.set_execution(model, "static")
        features = model.forward_features(x)
        assert list(features) == list(expected)
        for name in expected:
            assert torch.equal(features[name], expected[name]), name
        laudnet.set_execution(model, "masked")
        laudnet.set_decisions(model, rate=1.0)
        masked = model.forward_features(x)
    for name in expected:
        torch.testing.assert_close(masked[name], expected[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, paradigm, granularity", [
    ("resnet18", "spatial-spatial-channel-layer", "4-2-4-1"),
    ("mobilenet_v2", "none-spatial-channel-layer-spatial-channel-none", "1-2-8-1-1-8-1"),
])
def test_features_masked_equal_sparse(arch, paradigm, granularity):
    model = randomize_norms(laudnet.create_model(arch, paradigm=paradigm, granularity=granularity,
                                                 input_size=64)).eval()
    laudnet.set_decisions(model, rate=0.5, seed=3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        masked = model.forward_features(x)
    masked_stats = laudnet.stats(model)
    laudnet.set_execution(model, "sparse")
    sparse = model.forward_features(x)
    sparse_stats = laudnet.stats(model)
    assert list(sparse) == list(masked)
    for name in masked:
        assert_close_to_scale(sparse[name], masked[name])
    assert model.input_shape == (3, 64, 64)
    assert masked_stats.mean_rates == sparse_stats.mean_rates
    assert 0.3 < sparse_stats.flops_ratio < 0.9
    assert sparse_stats.static_flops == laudnet.static_macs(model, (3, 64, 64))


def test_features_only_resnet_returns_mapped_stages():
    model = DynamicResNet(DynamicBasicBlock, [1, 1, 1, 1], paradigm="layer",
                          return_layers={"layer4": "c", "layer2": "a"})
    assert not hasattr(model, "fc") and not hasattr(model, "avgpool")
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["a", "c"] and out["c"].shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="return_layers must map some of layer1, layer2, layer3, layer4"):
        DynamicResNet(DynamicBasicBlock, [1, 1, 1, 1], return_layers={"fc": "0"})


# ----------------------------------------------------------------- detectors
DETECTORS = [
    ("fasterrcnn_resnet50_fpn", {"box_score_thresh": 0.0, "box_detections_per_img": 20}),
    ("maskrcnn_resnet50_fpn", {"box_score_thresh": 0.0, "box_detections_per_img": 10}),
    ("retinanet_resnet50_fpn", {"score_thresh": 0.0, "detections_per_img": 20}),
]


def _assert_same_detections(actual, expected):
    assert sum(len(e["boxes"]) for e in expected) > 0  # random weights: some boxes degenerate
    for a, e in zip(actual, expected, strict=True):
        assert set(a) == set(e)
        for key in e:
            assert torch.equal(a[key], e[key]), key


@pytest.mark.parametrize("name, kwargs", DETECTORS)
def test_converted_detector_is_exact_with_gates_open(name, kwargs):
    reference = randomize_norms(getattr(detection, name)(weights=None, weights_backbone=None, **SMALL, **kwargs))
    reference.eval()
    model = laudnet.convert(reference, paradigm="spatial-channel-layer-spatial")
    assert type(model) is type(reference) and model is not reference
    assert isinstance(model.backbone.body, DynamicResNet)
    assert model.backbone.body.return_layers == reference.backbone.body.return_layers  # RetinaNet: layer2..4
    assert model.backbone.fpn is not reference.backbone.fpn  # a copy: the original is untouched
    assert isinstance(reference.backbone.body, IntermediateLayerGetter)

    body, original = laudnet.backbone_state_dict(model.backbone.body), reference.backbone.body.state_dict()
    assert list(body) == list(original)
    assert all(torch.equal(body[k], original[k]) for k in original)
    others = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.body.")}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in others.items())

    images = _images()
    exact = laudnet.convert(reference, paradigm="spatial-channel-layer-spatial", skip_padding=False)
    with torch.no_grad():
        expected = reference(images)
        laudnet.set_execution(model, "static")
        _assert_same_detections(model(images), expected)
        laudnet.set_decisions(exact, rate=1.0)  # every gate open, the padding computed too
        _assert_same_detections(exact(images), expected)
        laudnet.set_execution(model, "masked")
        laudnet.set_decisions(model, rate=1.0)  # every gate open on one image: nothing padded
        _assert_same_detections(model(images[:1]), reference(images[:1]))


def _padded_patches(block, sizes, input_size):
    """1 where a patch of ``block``'s last spatial decision lies wholly in the padding."""
    rows, cols = block.last_decision.spatial.shape[-2:]
    height, width = block.last.input_shape[-2:]
    side, stride = block.spatial_masker.granularity, block.spatial_masker.stride
    top = torch.arange(rows) * side * input_size[0] / -(-height // stride)
    left = torch.arange(cols) * side * input_size[1] / -(-width // stride)
    sizes = torch.tensor(sizes)
    return ((top[None, :, None] >= sizes[:, 0, None, None]) | (left[None, None, :] >= sizes[:, 1, None, None]))


def test_padding_costs_nothing_and_masked_equals_sparse():
    model = laudnet.convert(_frozen_detector(), paradigm="spatial", granularity="2-2-1-1")
    laudnet.set_decisions(model, rate=0.6, seed=2)
    images = _images()
    batch, _ = model.transform(images)
    sizes, input_size = batch.image_sizes, batch.tensors.shape[-2:]
    assert sizes[1][1] < input_size[1]  # the second image is padded on the right
    body = model.backbone.body
    with torch.no_grad():
        body.image_sizes = sizes
        masked = model.backbone(batch.tensors)
    assert body.image_sizes is None  # used by one pass only
    masked_stats = laudnet.stats(model)
    padded = 0
    for _, block in dynamic_blocks(body):
        outside = _padded_patches(block, sizes, input_size)
        assert block.last_decision.spatial[outside].sum() == 0 and block.last_decision.spatial.sum() > 0
        padded += int(outside.sum())
    assert padded > 0
    with torch.no_grad():
        model.backbone(batch.tensors)  # not told the sizes: the padding is computed like the image
    assert laudnet.stats(model).flops_per_sample[1] > masked_stats.flops_per_sample[1]
    laudnet.set_execution(model, "sparse")
    body.image_sizes = sizes
    sparse = model.backbone(batch.tensors)
    for key in masked:
        assert_close_to_scale(sparse[key], masked[key])
    assert laudnet.stats(model).mean_rates == masked_stats.mean_rates
    with torch.no_grad():  # through the detector, its transform tells the body the sizes
        model(images)
    assert laudnet.stats(model).mean_rates == masked_stats.mean_rates

    with pytest.raises(ValueError, match="image_sizes holds 1 sizes for a batch of 2 images"):
        body.image_sizes = sizes[:1]
        body(batch.tensors)


def _frozen_detector() -> torch.nn.Module:
    """Faster R-CNN as torchvision builds it for pretrained weights (FrozenBatchNorm2d, the
    first stages frozen), on ResNet-18 with a non-default eps, random statistics."""
    resnet = torchvision.models.resnet18(norm_layer=lambda n: FrozenBatchNorm2d(n, eps=1e-3))
    backbone = _resnet_fpn_extractor(resnet, trainable_layers=3)
    model = detection.FasterRCNN(backbone, box_score_thresh=0.0, box_detections_per_img=20, **SMALL)
    return randomize_norms(model).eval()


def test_frozen_batch_norm_body_keeps_norms_flags_and_outputs():
    reference = _frozen_detector()
    model = laudnet.convert(reference, paradigm="layer+channel-spatial-spatial-channel", granularity="2-4-2-8")
    body = model.backbone.body
    assert body.return_layers == {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    norms = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 20 and all(m.eps == 1e-3 for m in norms)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    original = reference.backbone.body
    assert laudnet.backbone_state_dict(body).keys() == original.state_dict().keys()
    flags = {k: p.requires_grad for k, p in original.named_parameters()}
    assert {k: p.requires_grad for k, p in body.named_parameters() if k in flags} == flags
    assert not flags["layer1.0.conv1.weight"] and flags["layer2.0.conv1.weight"]
    assert all(p.requires_grad for p in laudnet.gate_parameters(body))

    images = _images()
    with torch.no_grad():
        expected = reference(images)
        laudnet.set_execution(model, "static")
        _assert_same_detections(model(images), expected)


def test_detector_masked_equals_sparse_and_stats_cover_the_body():
    model = laudnet.convert(_frozen_detector(), paradigm="layer+channel-spatial-spatial-channel",
                            granularity="2-4-2-8")
    laudnet.set_decisions(model, rate=0.5, seed=1)
    images = _images()
    batch, _ = model.transform(images)
    with torch.no_grad():
        masked = model.backbone(batch.tensors)
        masked_stats = laudnet.stats(model)
        laudnet.set_execution(model, "sparse")
        sparse = model.backbone(batch.tensors)
    sparse_stats = laudnet.stats(model)
    assert list(sparse) == list(masked) == ["0", "1", "2", "3", "pool"]
    for key in masked:
        assert_close_to_scale(sparse[key], masked[key])

    body = model.backbone.body
    assert body.input_shape == tuple(batch.tensors.shape[1:]) == (3, 128, 160)
    assert [b.name for b in sparse_stats.blocks][0] == "backbone.body.layer1.0"
    assert len(sparse_stats.blocks) == 8
    assert sparse_stats.mean_rates == masked_stats.mean_rates
    assert all(0.0 <= rate <= 1.0 for rate in sparse_stats.mean_rates.values())
    assert sparse_stats.static_flops == laudnet.static_macs(body, body.input_shape)
    assert 0.4 < sparse_stats.flops_ratio < 0.9
    assert "backbone.body.layer4.1 channel" in sparse_stats.summary()

    with torch.no_grad():  # the whole detector runs on the sparse body
        detections = model(images)
    assert len(detections) == 2 and sum(len(d["boxes"]) for d in detections) > 0
    assert laudnet.stats(model).mean_rates == sparse_stats.mean_rates


def test_create_detector_builds_a_trainable_dynamic_detector():
    model = laudnet.detection.create_detector("fasterrcnn_resnet50_fpn", paradigm="layer", **SMALL)
    assert isinstance(model, detection.FasterRCNN) and isinstance(model.backbone.body, DynamicResNet)
    assert model.backbone.body.paradigm == "layer-layer-layer-layer"
    assert model.training
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([2])}]
    losses = model(_images(), targets)
    loss = sum(losses.values()) + laudnet.flops_budget_loss(model, target=0.5, progress=0.5)
    loss.backward()
    assert all(p.grad is not None for p in laudnet.gate_parameters(model))
    assert "fcos_resnet50_fpn" in laudnet.detection.list_detectors()


def test_unsupported_detectors_and_names_are_refused():
    mobile = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(ValueError, match="IntermediateLayerGetter over 0, 1, .*; supported: torchvision's "
                                         "IntermediateLayerGetter over a ResNet"):
        laudnet.convert(mobile)
    no_layer4 = detection.FasterRCNN(_resnet_fpn_extractor(torchvision.models.resnet18(), 3, [1, 2, 3]), 3)
    with pytest.raises(ValueError, match="returning layer4"):
        laudnet.convert(no_layer4)
    with pytest.raises(ValueError, match="cannot convert Conv2d; supported: torchvision ResNet, RegNet, "
                                         "MobileNetV2 classifiers and GeneralizedRCNN, RetinaNet, FCOS detectors"):
        laudnet.convert(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="cannot convert ResNet as a detector"):
        laudnet.detection.convert_detector(torchvision.models.resnet18())
    with pytest.raises(ValueError, match="detector is 'yolo'; allowed: fasterrcnn_resnet18_fpn, fasterrcnn_resnet50_fpn"):
        laudnet.detection.create_detector("yolo")
    with pytest.raises(ValueError, match="without weights, got weights='DEFAULT'"):
        laudnet.detection.create_detector("retinanet_resnet50_fpn", weights="DEFAULT")
