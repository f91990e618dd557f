"""Dynamic RegNet-Y and MobileNetV2: builders, weight loading, statistics, bad input (conversion and
sparse == masked are tested with the ResNets, in test_convert.py and test_equivalence.py)."""

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import laudnet
from laudnet.blocks import DynamicInvertedResidual

from conftest import count_executed_macs


def test_torchvision_state_dicts_load_strictly_into_backbones():
    for name in ("regnet_y_400mf", "regnet_y_1_6gf", "mobilenet_v2"):
        model = laudnet.create_model(name, paradigm="layer")
        laudnet.load_backbone(model, getattr(torchvision.models, name)().state_dict())
    state = torchvision.models.regnet_y_400mf().state_dict()
    del state["trunk_output.block2.block2-0.f.se.fc1.weight"]
    with pytest.raises(ValueError, match="missing.*block2-0.f.se.fc1.weight"):
        laudnet.load_backbone(laudnet.create_model("regnet_y_400mf"), state)


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
