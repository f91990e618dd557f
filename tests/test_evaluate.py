"""Evaluation: figures computed from what the network did."""

import pytest
import torch

import laudnet
from laudnet.data import ClutteredObjects, eval_loader
from laudnet.evaluate import evaluate
from laudnet.metrics import Totals, accumulate, object_overlap
from laudnet.report.masks import spatial_maps


def spatial_model(granularity="4-2-1"):
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial", granularity=granularity, num_classes=8,
                                 in_channels=1, input_size=16)
    return model.eval()


def test_object_overlap_counts_patches_on_the_box():
    model = spatial_model()
    laudnet.set_decisions(model, rate=1.0)
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 16))
    # every block has a 4×4 grid of patches covering 4×4 image pixels each
    boxes = torch.tensor([[0, 0, 4, 4], [3, 3, 9, 5]])  # 1 patch; rows 0-2 × cols 0-1 = 6 patches
    counts = object_overlap(model, boxes)
    assert list(counts) == [name for name, _ in laudnet.dynamic.dynamic_blocks(model)] and len(counts) == 9
    for kept_on, kept, on, total in counts.values():
        assert (kept, total) == (32, 32)
        assert on == kept_on == 1 + 6
    laudnet.set_decisions(model, {name: 0.0 if name.startswith("layer1") else 1.0 for name in counts})
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 16))
    totals = Totals()
    totals.add(laudnet.stats(model), object_overlap(model, boxes))
    assert totals.object_share("layer1.0") is None and totals.chance_share("layer1.0") == 7 / 32
    assert totals.object_share("layer2.0") == 7 / 32
    assert totals.object_share() == 7 / 32 and totals.chance_share() == 7 / 32


def test_spatial_maps_show_where_blocks_compute():
    model = spatial_model()
    laudnet.set_decisions(model, rate=0.25, seed=1)
    with torch.no_grad():
        model(torch.randn(3, 1, 16, 16))
    maps = spatial_maps(model)
    assert list(maps) == ["layer1", "layer2", "layer3"] and maps["layer1"].shape == (3, 16, 16)
    # stage 1: three blocks with 4×4 patches of 4×4 pixels; stage 3: 1×1 patches of 4×4 pixels
    for stage, pixels in (("layer1", 4), ("layer3", 4)):
        blocks = getattr(model, stage)
        expected = torch.stack([torch.kron(b.last_decision.spatial, torch.ones(pixels, pixels)) for b in blocks]).mean(0)
        assert torch.allclose(maps[stage], expected)
    assert float(maps["layer1"].mean()) == pytest.approx(0.25)


def test_sparse_and_masked_evaluation_agree():
    torch.manual_seed(0)
    model = spatial_model("8-4-4")
    with torch.no_grad():  # gates that skip some patches of some images
        for masker in (b.spatial_masker for _, b in laudnet.dynamic.dynamic_blocks(model)):
            masker.conv.weight.normal_(0, 2.0)
            masker.conv.bias.fill_(0.0)
    data = ClutteredObjects(24, size=16)
    loader = eval_loader(data, 8)
    masked = accumulate(laudnet.set_execution(model, "masked"), loader)
    sparse = accumulate(laudnet.set_execution(model, "sparse"), loader)
    assert 0.1 < masked.flops_ratio < 1.2
    assert masked.correct == sparse.correct and masked.flops == pytest.approx(sparse.flops)
    result = evaluate(model, data, latency_batches=(2,), repeats=2, hardware=("v100", "jetson_tx2"))
    assert result["accuracy"] == pytest.approx(sparse.accuracy)
    assert result["latency"][0]["batch"] == 2 and result["latency"][0]["speedup"] > 0
    assert 0 <= result["object"]["kept_on_object"] <= 1
    assert [b["name"] for b in result["blocks"]][:2] == ["layer1.0", "layer1.1"]
    assert model.layer1[0].execution == "masked"
    rates = {b["name"]: b["rate"] for b in result["blocks"]}  # the predictor prices the measured rates
    for predicted, hardware in zip(result["predicted"], ("v100", "jetson_tx2")):
        static = laudnet.predict_latency(model, hardware, 2, 16, execution="static").total_ms
        dynamic = laudnet.predict_latency(model, hardware, 2, 16, rates=rates).total_ms
        assert (predicted["hardware"], predicted["batch"]) == (hardware, 2)
        assert (predicted["static_ms"], predicted["dynamic_ms"]) == pytest.approx((static, dynamic))
