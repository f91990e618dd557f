import pytest
import torch
import torchvision

import laudnet

from conftest import assert_close_to_scale, randomize_norms


@pytest.mark.parametrize("arch, kwargs, paradigm, size", [
    ("resnet18", {}, "spatial-channel-layer-layer+channel", 96),
    ("resnet50", {}, "layer+spatial-spatial-channel-layer", 96),
    ("regnet_y_400mf", {}, "layer+spatial-spatial-channel-layer", 64),
    ("regnet_y_800mf", {}, "channel-layer+channel-spatial-layer", 64),
    ("regnet_x_400mf", {}, "spatial-channel-layer-layer+spatial", 64),
    ("mobilenet_v2", {}, "none-spatial-channel-layer+spatial-layer-layer+channel-none", 64),
    ("mobilenet_v2", {"width_mult": 0.5}, "channel", 64),
])
def test_converted_model_reproduces_torchvision(arch, kwargs, paradigm, size):
    reference = randomize_norms(getattr(torchvision.models, arch)(num_classes=20, **kwargs)).eval()
    model = laudnet.convert(reference, paradigm=paradigm, input_size=size)
    assert not model.training
    # every torchvision weight is held unchanged
    backbone = laudnet.backbone_state_dict(model)
    assert backbone.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(backbone[key], value), key
    x = torch.randn(2, 3, size, size)
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


def test_torchvision_state_dict_loads_strictly_into_backbone():
    reference = torchvision.models.resnet50()
    model = laudnet.create_model("resnet50", paradigm="channel")
    laudnet.load_backbone(model, reference.state_dict())
    with pytest.raises(ValueError, match="missing.*layer1.0.conv1.weight"):
        state = reference.state_dict()
        del state["layer1.0.conv1.weight"]
        laudnet.load_backbone(model, state)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        laudnet.load_backbone(model, {**reference.state_dict(), "extra": torch.zeros(1)})


def test_convert_keeps_dtype_and_rejects_unsupported():
    model = laudnet.convert(torchvision.models.resnet18().double(), paradigm="layer")
    assert next(model.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="ResNeXt and wide"):
        laudnet.convert(torchvision.models.wide_resnet50_2())
    with pytest.raises(ValueError, match="cannot convert VGG"):
        laudnet.convert(torchvision.models.vgg11())
