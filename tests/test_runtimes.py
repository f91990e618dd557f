"""The static baselines of the benchmarks compute the same network as torch eager."""

import importlib.util

import pytest
import torch
import torchvision

from laudnet.measure.bench import markdown_table, network_suite
from laudnet.measure.runtimes import RUNTIMES, available_runtimes, dense_baselines


def _outputs(result) -> torch.Tensor:
    """Logits from a baseline call: a tensor, ONNX Runtime's list or OpenVINO's result."""
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, list):
        return torch.from_numpy(result[0])
    return torch.from_numpy(next(iter(result.values())))


def test_every_static_baseline_computes_the_eager_logits():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        baselines = dense_baselines(reference, x)
        names = set(baselines)
        for name, call in baselines.items():
            torch.testing.assert_close(_outputs(call()), expected, rtol=1e-3, atol=1e-3, msg=name)
    assert {"eager", "eager_channels_last"} <= names
    assert set(available_runtimes()) <= names
    assert set(dense_baselines(reference, x, runtimes=False)) == {"eager", "eager_channels_last"}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_installed_runtimes_are_found(runtime):
    installed = importlib.util.find_spec(runtime) is not None and importlib.util.find_spec("onnx") is not None
    assert (runtime in available_runtimes()) == installed


def test_network_suite_refuses_unknown_networks_and_rates():
    with pytest.raises(ValueError, match="'vgg16' is unknown; allowed: resnet50"):
        network_suite(archs=["vgg16"])
    with pytest.raises(ValueError, match="rate 1.5 is out of range"):
        network_suite(rates=[0.5, 1.5])
    configs = network_suite(archs=["mobilenet_v2"], rates=[0.5], batches=[1])
    assert {c["paradigm"] for c in configs} == {"spatial", "channel", "layer"}
    assert markdown_table([]).startswith("Machine: ")
