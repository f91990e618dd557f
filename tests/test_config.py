import pytest

import laudnet
from laudnet.config import parse_paradigm


def test_single_word_applies_to_all_stages():
    assert parse_paradigm("layer+channel", 4) == ["layer+channel"] * 4
    model = laudnet.create_model("resnet18", paradigm="spatial-spatial-channel-layer", granularity="4-4-2-1")
    assert model.paradigm == "spatial-spatial-channel-layer"
    assert [c.granularity for c in model.stage_configs] == [4, 4, 2, None]


def test_default_granularity_per_stage_paradigm():
    model = laudnet.create_model("resnet50", paradigm="spatial-spatial-channel-layer")
    assert [c.granularity for c in model.stage_configs] == [4, 4, 4, None]


@pytest.mark.parametrize("kwargs, words", [
    (dict(paradigm="spatial-spacial-layer-layer"), ["stage 2", "'spacial'", "allowed: spatial, channel"]),
    (dict(paradigm="spatial-layer"), ["2 stages", "has 4", "'-'"]),
    (dict(granularity="4-4-2"), ["3 stages", "has 4"]),
    (dict(granularity="4-0-2-1"), ["stage 2", "'0'", "positive integer"]),
    (dict(granularity="4-x-2-1"), ["stage 2", "'x'", "positive integer"]),
    (dict(granularity="4-4-2-1.5"), ["stage 4", "'1.5'", "positive integer"]),
    (dict(granularity=-3), ["stage 1", "-3", "positive integer"]),
    (dict(granularity="4-4-2-8"), ["stage 4", "8", "7x7 feature map", "1..7"]),
    (dict(paradigm="channel", granularity="4-4-4-1024"), ["stage 4", "1024", "512 inner channels"]),
])
def test_bad_specs_name_stage_value_and_allowed(kwargs, words):
    with pytest.raises(ValueError) as info:
        laudnet.create_model("resnet50", **kwargs)
    for word in words:
        assert word in str(info.value)


def test_feature_map_check_follows_input_size():
    laudnet.create_model("cifar_resnet20", granularity="8-8-8")  # 32/16/8 maps
    with pytest.raises(ValueError, match="stage 3.*16.*8x8"):
        laudnet.create_model("cifar_resnet20", granularity="16-16-16")
    with pytest.raises(ValueError, match="stage 3.*7x7"):
        laudnet.create_model("cifar_resnet20", granularity="8-8-8", input_size=28)  # 28/14/7


def test_layer_stage_ignores_granularity():
    model = laudnet.create_model("resnet18", paradigm="layer", granularity="64")
    assert all(c.granularity is None for c in model.stage_configs)


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50"):
        laudnet.create_model("resnet51")


def test_registry_lists_all_builders():
    names = laudnet.list_models()
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                 "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110"]:
        assert name in names


def test_cifar_depths():
    model = laudnet.create_model("cifar_resnet56", num_classes=100)
    assert [len(s) for s in model.stages()] == [9, 9, 9]
    assert model.fc.out_features == 100
