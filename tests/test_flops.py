import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import laudnet


def flop_counter_macs(model, shape):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def test_static_macs_of_torchvision_resnet50_agree_with_flop_counter():
    reference = torchvision.models.resnet50().eval()
    macs = laudnet.static_macs(reference, (3, 224, 224))
    assert macs == flop_counter_macs(reference, (3, 224, 224))
    assert abs(macs / 1e9 - 4.09) < 0.01


@pytest.mark.parametrize("name, paradigm", [("resnet18", "spatial-channel-layer-layer+spatial"),
                                            ("resnet50", "layer+channel-channel-layer-spatial"),
                                            ("cifar_resnet20", "spatial-channel-layer")])
def test_dynamic_model_static_flops_equal_flop_counter(name, paradigm):
    model = laudnet.create_model(name, paradigm=paradigm)
    shape = (3, 32, 32) if name.startswith("cifar") else (3, 224, 224)
    laudnet.set_execution(model, "static")
    expected = flop_counter_macs(model.eval(), shape)
    laudnet.set_execution(model, "masked")
    with torch.no_grad():
        model(torch.randn(2, *shape))
    assert laudnet.stats(model).static_flops == expected


def test_rates_and_flops_follow_fixed_decisions():
    model = laudnet.create_model("resnet50", paradigm="spatial", granularity="4-4-2-1").eval()
    x = torch.randn(1, 3, 224, 224)
    ratios = {}
    for rate in (0.25, 0.5, 1.0):
        laudnet.set_decisions(model, rate=rate)
        with torch.no_grad():
            model(x)
        s = laudnet.stats(model)
        # per sample round(rate × patches) are on: grids of 14×14, 7×7, 7×7 and 7×7 patches
        expected = [round(rate * 196) / 196] * 3 + [int(rate * 49 + 0.5) / 49] * 13
        assert list(s.mean_rates.values()) == pytest.approx(expected)
        ratios[rate] = s.flops_ratio
    assert ratios[0.25] < ratios[0.5] < ratios[1.0]


def test_stats_before_forward_and_on_static_models_fail_clearly():
    with pytest.raises(RuntimeError, match="forward pass"):
        laudnet.stats(laudnet.create_model("cifar_resnet20"))
    with pytest.raises(ValueError, match="no dynamic blocks.*create_model"):
        laudnet.stats(torchvision.models.resnet18())


def test_last_decision_keeps_the_masks_of_the_last_pass():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial-channel-layer", granularity="2-4-1").eval()
    laudnet.set_decisions(model, rate=0.5, seed=3)
    with torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    spatial = model.layer1[0].last_decision.spatial
    assert spatial.shape == (3, 16, 16) and not spatial.requires_grad
    assert spatial.flatten(1).mean(1).tolist() == pytest.approx(model.layer1[0].last.rate.tolist())
    assert model.layer2[0].last_decision.channel.shape == (3, 8)
    assert model.layer3[0].last_decision.layer.shape == (3,)
    laudnet.static_macs(model, (3, 32, 32))  # a static pass inside must not clear what we keep
    assert torch.equal(model.layer1[0].last_decision.spatial, spatial)
    laudnet.set_execution(model, "static")
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert model.layer1[0].last_decision is None


def test_stats_keep_no_cache_on_the_model():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial", granularity=2).eval()
    before = set(vars(model))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    first = laudnet.stats(model)
    assert laudnet.stats(model).static_flops == first.static_flops == laudnet.static_macs(model, (3, 32, 32))
    assert set(vars(model)) == before
