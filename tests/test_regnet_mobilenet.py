"""Dynamic RegNet-Y and MobileNetV2: builders, conversion from torchvision, statistics."""

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import laudnet
from laudnet.blocks import DynamicInvertedResidual
from laudnet.dynamic import count_executed_macs, dynamic_blocks

from conftest import assert_close_to_scale, randomize_norms
from test_block_families import randomize_gates




@pytest.mark.parametrize("arch, kwargs, paradigm", [
    ("regnet_y_400mf", {}, "layer+spatial-spatial-channel-layer"),
    ("regnet_y_800mf", {}, "channel-layer+channel-spatial-layer"),
    ("regnet_x_400mf", {}, "spatial-channel-layer-layer+spatial"),
    ("mobilenet_v2", {}, "none-spatial-channel-layer+spatial-layer-layer+channel-none"),
    ("mobilenet_v2", {"width_mult": 0.5}, "channel"),
])
def test_converted_model_reproduces_torchvision(arch, kwargs, paradigm):
    reference = randomize_norms(getattr(torchvision.models, arch)(num_classes=20, **kwargs)).eval()
    model = laudnet.convert(reference, paradigm=paradigm, input_size=64)
    assert not model.training
    backbone = laudnet.backbone_state_dict(model)
    assert backbone.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(backbone[key], value), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        laudnet.set_decisions(model, rate=1.0)
        for mode in ("static", "masked", "sparse"):
            laudnet.set_execution(model, mode)
            assert_close_to_scale(model(x), expected)
        laudnet.clear_decisions(model)  # gates initialised to keep everything
        laudnet.set_execution(model, "masked")
        assert_close_to_scale(model(x), expected)
        assert min(laudnet.stats(model).mean_rates.values()) == 1.0


def test_torchvision_state_dicts_load_strictly_into_backbones():
    for name in ("regnet_y_400mf", "regnet_y_1_6gf", "mobilenet_v2"):
        model = laudnet.create_model(name, paradigm="layer")
        laudnet.load_backbone(model, getattr(torchvision.models, name)().state_dict())
    state = torchvision.models.regnet_y_400mf().state_dict()
    del state["trunk_output.block2.block2-0.f.se.fc1.weight"]
    with pytest.raises(ValueError, match="missing.*block2-0.f.se.fc1.weight"):
        laudnet.load_backbone(laudnet.create_model("regnet_y_400mf"), state)


MIXED_REGNET = "spatial-channel-layer+spatial-layer+channel"
MIXED_MOBILENET = "none-spatial-channel-layer+spatial-layer+channel-layer-none"


@pytest.mark.parametrize("name, paradigm, granularity, size", [
    ("regnet_y_400mf", MIXED_REGNET, "3-16-2-8", 45),
    ("regnet_y_800mf", MIXED_REGNET, "2-32-1-16", 40),
    ("regnet_y_1_6gf", "layer+channel-spatial-channel-layer", "48-4-24-1", 37),
    ("mobilenet_v2", MIXED_MOBILENET, "1-3-8-2-16-1-1", 41),
    ("mobilenet_v2", "spatial", "1-4-3-2-1-1-1", 51),
])
def test_network_sparse_equals_masked(name, paradigm, granularity, size):
    model = laudnet.create_model(name, paradigm=paradigm, granularity=granularity, num_classes=7,
                                 gate_scale=True, input_size=64)
    randomize_norms(model).eval()
    for _, block in dynamic_blocks(model):
        randomize_gates(block, seed=1)
    x = torch.randn(3, 3, size, size)
    outputs = {}
    for mode in ("masked", "sparse"):
        laudnet.set_execution(model, mode)
        with torch.no_grad():
            outputs[mode] = model(x)
        outputs[mode + "_stats"] = laudnet.stats(model)
    assert_close_to_scale(outputs["sparse"], outputs["masked"])
    assert outputs["sparse_stats"].mean_rates == outputs["masked_stats"].mean_rates
    rates = outputs["sparse_stats"].mean_rates.values()
    assert min(rates) < 1.0 and max(rates) > 0.0  # the gates skip some work and do some


@pytest.mark.parametrize("name", ["regnet_y_400mf", "mobilenet_v2"])
@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer", "layer+spatial", "layer+channel"])
def test_stats_count_what_sparse_executes(name, paradigm):
    model = laudnet.create_model(name, paradigm=paradigm, input_size=64).eval()
    laudnet.set_execution(model, "sparse")
    x = torch.randn(2, 3, 64, 64)
    for rate in (0.0, 0.3, 1.0):
        laudnet.set_decisions(model, rate=rate, seed=2)
        executed = count_executed_macs(model, x)
        assert float(laudnet.stats(model).flops_per_sample.sum()) == executed


def flop_counter_macs(model, shape):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name, gmacs", [("regnet_y_400mf", 0.402), ("regnet_y_800mf", 0.834),
                                         ("regnet_y_1_6gf", 1.612), ("mobilenet_v2", 0.301)])
def test_static_flops_equal_torchvision(name, gmacs):
    """Static MACs of the dynamic model = torch's flop counter on torchvision's model =
    torchvision's published GFLOPS."""
    reference = getattr(torchvision.models, name)()
    expected = flop_counter_macs(reference, (3, 224, 224))
    assert laudnet.static_macs(reference, (3, 224, 224)) == expected
    assert round(expected / 1e9, 3) == gmacs
    model = laudnet.create_model(name, paradigm="spatial-channel-layer-layer+spatial" if "regnet" in name
                                 else "layer+channel").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert laudnet.stats(model).static_flops == expected


def test_default_granularities_and_stages():
    regnet = laudnet.create_model("regnet_y_1_6gf", paradigm="spatial-spatial-channel-channel")
    assert [c.granularity for c in regnet.stage_configs] == [4, 4, 24, 24]  # channel: the group width
    assert [len(s) for s in regnet.stages()] == [2, 6, 17, 2]
    mobilenet = laudnet.create_model("mobilenet_v2")
    assert mobilenet.paradigm == "none-spatial-spatial-spatial-spatial-spatial-none"
    assert [c.granularity for c in mobilenet.stage_configs] == [None, 4, 4, 2, 2, 1, None]
    dynamic = [[i for i, m in enumerate(mobilenet.features) if isinstance(m, DynamicInvertedResidual) and m in s]
               for s in mobilenet.stages()]
    assert dynamic == [[], [3], [5, 6], [8, 9, 10], [12, 13], [15, 16], []]
    assert laudnet.create_model("mobilenet_v2", paradigm="channel").granularity == "1-8-8-8-8-8-1"
    small = laudnet.create_model("mobilenet_v2", input_size=64)  # maps 32, 16, 8, 4, 4, 2, 2
    assert [c.granularity for c in small.stage_configs] == [None, 4, 4, 2, 2, 1, None]
    small = laudnet.create_model("regnet_y_400mf", input_size=16)  # maps 4, 2, 1, 1: capped
    assert [c.granularity for c in small.stage_configs] == [4, 2, 1, 1]
    small = laudnet.create_model("mobilenet_v2", input_size=32)  # maps 16, 8, 4, 2, 2, 1, 1
    assert [c.granularity for c in small.stage_configs] == [None, 4, 4, 2, 2, 1, None]


@pytest.mark.parametrize("name, kwargs, words", [
    ("regnet_y_400mf", dict(paradigm="channel", granularity="8-8-4-8"),
     ["stage 3", "is 4", "8-channel groups", "multiples of 8 up to 208"]),
    ("regnet_y_800mf", dict(paradigm="channel", granularity=8), ["stage 1", "is 8", "multiples of 16"]),
    ("regnet_y_400mf", dict(granularity="4-4-2-8"), ["stage 4", "7x7 feature map", "1..7"]),
    ("regnet_y_400mf", dict(paradigm="spatial-layer"), ["2 stages", "has 4"]),
    ("mobilenet_v2", dict(paradigm="spatial-spatial-spatial-spatial-spatial-spatial-none"),
     ["stage 1", "no residual block", "'none'", "'spatial'"]),
    ("mobilenet_v2", dict(granularity="1-4-4-2-2-8-1"), ["stage 6", "8", "7x7 feature map"]),
    ("mobilenet_v2", dict(paradigm="channel", granularity="1-8-8-8-8-1000-1"), ["stage 6", "960 inner channels"]),
    ("mobilenet_v2", dict(paradigm="spatial-layer"), ["2 stages", "has 7"]),
])
def test_bad_specs_name_stage_value_and_allowed(name, kwargs, words):
    with pytest.raises(ValueError) as info:
        laudnet.create_model(name, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_convert_rejects_unsupported_variants():
    model = torchvision.models.regnet_y_400mf()
    model.trunk_output.block1[0].activation = torch.nn.SiLU()
    with pytest.raises(ValueError, match="ReLU activations and BatchNorm2d"):
        laudnet.convert(model)
    with pytest.raises(ValueError, match="supported: torchvision ResNet, RegNet, MobileNetV2"):
        laudnet.convert(torchvision.models.mobilenet_v3_small())


def test_registry_lists_new_builders():
    names = laudnet.list_models()
    for name in ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf",
                 "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "mobilenet_v2"]:
        assert name in names


@pytest.mark.parametrize("name, paradigm", [("regnet_y_400mf", "spatial-channel-layer+spatial-layer"),
                                            ("mobilenet_v2", "layer+channel")])
def test_budget_loss_trains_the_gates(name, paradigm):
    model = laudnet.create_model(name, paradigm=paradigm, granularity=None, num_classes=4, input_size=32).train()
    model(torch.randn(4, 3, 32, 32))
    loss = laudnet.flops_budget_loss(model, target=0.3)
    loss.backward()
    gates = laudnet.gate_parameters(model)
    assert gates and all(p.grad is not None for p in gates)
