"""Sparse execution must compute exactly what masked execution computes, for the same
decisions: the most important property of the project."""

import itertools

import pytest
import torch
from torch import nn

import laudnet
from laudnet.blocks import DynamicBasicBlock, DynamicBottleneck
from laudnet.config import StageConfig
from laudnet.engine import channel
from laudnet.sparse import expand_groups, samples_by_channels

from conftest import assert_close_to_scale, count_executed_macs, randomize_norms

SPECS = ([("spatial", s) for s in (1, 2, 3, 4, 7, 8)] + [("layer+spatial", s) for s in (1, 3, 8)]
         + [("channel", g) for g in (1, 2, 4)] + [("layer+channel", g) for g in (1, 4)] + [("layer", None)])


def make_block(block_type, stride, inplanes, planes, config, gate_scale=False):
    downsample = None
    if stride != 1 or inplanes != planes * block_type.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block_type.expansion, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * block_type.expansion))
    block = block_type(inplanes, planes, stride, downsample, config=config, gate_scale=gate_scale)
    return randomize_norms(block, seed=stride).eval()


def run(block, x, mode):
    block.execution = mode
    with torch.no_grad():
        return block(x)


@pytest.fixture(params=["cpp+onednn", "cpp+aten", "pytorch+aten"])
def kernels(request):
    """Run a test with the C++ sparse kernels and with the PyTorch ones (the fallback), and
    with each convolution backend (oneDNN fused and pre-packed, PyTorch's own)."""
    from laudnet.sparse import extension, tuning
    from laudnet.sparse.packed import onednn_available

    gather, backend = request.param.split("+")
    if gather == "cpp" and extension.extension() is None:
        pytest.skip("C++ sparse kernels unavailable")
    if backend == "onednn" and not onednn_available(torch.zeros(1)):
        pytest.skip("oneDNN unavailable")
    extension.set_enabled(gather == "cpp")
    with tuning.forced_backend(backend):
        yield request.param
    extension.set_enabled(True)


@pytest.mark.parametrize("block_type", [DynamicBasicBlock, DynamicBottleneck])
@pytest.mark.parametrize("paradigm, granularity", SPECS)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_sparse_equals_masked_fixed_decisions(block_type, paradigm, granularity, stride, kernels):
    size = (11, 9) if stride == 1 else (13, 15)
    block = make_block(block_type, stride, 8, 8, StageConfig(paradigm, granularity))
    for batch, rate in itertools.product((1, 5), (0.0, 0.3, 1.0)):
        x = torch.randn(batch, 8, *size)
        block.fixed = laudnet.blocks.FixedDecisions(rate, seed=batch)
        masked = run(block, x, "masked")
        masked_rate = block.last.rate.clone()
        sparse = run(block, x, "sparse")
        assert_close_to_scale(sparse, masked)
        assert torch.equal(block.last.rate, masked_rate)


def randomize_gates(block, seed):
    """Maskers that give mixed decisions instead of "keep everything"."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for masker in block.maskers():
            for name, p in masker.named_parameters():
                p.copy_(torch.zeros(p.shape) if name.endswith("bias") else torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("block_type", [DynamicBasicBlock, DynamicBottleneck])
@pytest.mark.parametrize("paradigm, granularity",
                         [("spatial", 2), ("spatial", 3), ("channel", 2), ("layer", None),
                          ("layer+spatial", 2), ("layer+channel", 2)])
def test_block_sparse_equals_masked_with_gates_and_scale(block_type, paradigm, granularity):
    block = make_block(block_type, 2, 16, 8, StageConfig(paradigm, granularity), gate_scale=True)
    x = torch.randn(6, 16, 10, 10)
    for seed in range(20):  # find gates that mix on and off decisions in the batch
        randomize_gates(block, seed)
        masked = run(block, x, "masked")
        if 0 < float(block.last.rate.sum()) and (block.last.rate < 1).any():
            break
    else:
        pytest.fail("no seed gave mixed decisions")
    sparse = run(block, x, "sparse")
    assert_close_to_scale(sparse, masked)


def test_positions_outside_the_mask_get_relu_of_identity():
    block = make_block(DynamicBottleneck, 1, 32, 8, StageConfig("spatial", 2))
    x = torch.randn(2, 32, 6, 6)
    block.fixed = laudnet.blocks.FixedDecisions(0.0)
    for mode in ("masked", "sparse"):
        assert torch.equal(run(block, x, mode), torch.relu(x))


def test_all_channels_skipped_keeps_the_norm_shift():
    """With every channel group off the branch still adds bn3's response to zeros."""
    block = make_block(DynamicBottleneck, 1, 32, 8, StageConfig("channel", 2))
    x = torch.randn(2, 32, 5, 5)
    block.fixed = laudnet.blocks.FixedDecisions(0.0)
    shift = block.bn3(torch.zeros(1, 32, 1, 1))
    for mode in ("masked", "sparse"):
        torch.testing.assert_close(run(block, x, mode), torch.relu(x + shift))


MIXED = "spatial-channel-layer+spatial-layer+channel"
MIXED_MOBILENET = "none-spatial-channel-layer+spatial-layer+channel-layer-none"


@pytest.mark.parametrize("name, paradigm, granularity, size", [
    ("resnet18", MIXED, "3-2-2-1", 45),
    ("resnet50", MIXED, "2-4-1-2", 40),
    ("resnet50", "layer", None, 33),
    ("cifar_resnet20", "spatial-channel-layer+spatial", "4-2-3", 27),
    ("regnet_y_400mf", MIXED, "3-16-2-8", 45),
    ("regnet_y_800mf", MIXED, "2-32-1-16", 40),
    ("regnet_y_1_6gf", "layer+channel-spatial-channel-layer", "48-4-24-1", 37),
    ("mobilenet_v2", MIXED_MOBILENET, "1-3-8-2-16-1-1", 41),
    ("mobilenet_v2", "spatial", "1-4-3-2-1-1-1", 51),
])
def test_network_sparse_equals_masked(name, paradigm, granularity, size, kernels):
    model = laudnet.create_model(name, paradigm=paradigm, granularity=granularity, num_classes=7,
                                 gate_scale=True, input_size=64)
    randomize_norms(model).eval()
    for _, block in laudnet.dynamic.dynamic_blocks(model):
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
    assert 0.0 < outputs["sparse_stats"].flops_ratio < 1.0
    rates = outputs["sparse_stats"].mean_rates.values()
    assert min(rates) < 1.0 and max(rates) > 0.0  # the gates skip some work and do some


@pytest.mark.parametrize("paradigm, granularity", [("spatial", "2"), ("channel", "2"), ("layer", None),
                                                   ("layer+spatial", "1"), ("layer+channel", "4")])
def test_stats_count_what_sparse_executes(paradigm, granularity):
    """The analytic per-sample MACs equal those torch's flop counter sees in sparse mode."""
    model = laudnet.create_model("resnet18", paradigm=paradigm, granularity=granularity, input_size=64).eval()
    laudnet.set_execution(model, "sparse")
    x = torch.randn(1, 3, 64, 64)
    for rate in (0.0, 0.3, 1.0):
        laudnet.set_decisions(model, rate=rate, seed=2)
        executed = count_executed_macs(model, x)
        assert laudnet.stats(model).flops == executed


def test_sparse_work_shrinks_with_rate():
    model = laudnet.create_model("resnet50", paradigm="spatial", granularity="4-4-2-1").eval()
    laudnet.set_execution(model, "sparse")
    x = torch.randn(1, 3, 224, 224)
    flops = []
    for rate in (0.0, 0.25, 0.5, 1.0):
        laudnet.set_decisions(model, rate=rate)
        flops.append(count_executed_macs(model, x))
    assert flops == sorted(flops) and flops[0] < 0.15 * flops[-1]


def test_sparse_refuses_training_mode():
    model = laudnet.create_model("cifar_resnet20")
    laudnet.set_execution(model, "sparse")
    with pytest.raises(RuntimeError, match="model.eval"):
        model(torch.randn(2, 3, 32, 32))


def test_set_execution_rejects_unknown_mode():
    model = laudnet.create_model("cifar_resnet20")
    with pytest.raises(ValueError, match="'fast'.*masked, sparse, static"):
        laudnet.set_execution(model, "fast")


@pytest.mark.parametrize("run_pixels", [0, 10 ** 9])  # one run per channel mask / one run on their union
@pytest.mark.parametrize("paradigm", ["channel", "layer+channel"])
def test_channel_runs_per_mask_and_on_the_union_agree(run_pixels, paradigm, monkeypatch):
    monkeypatch.setattr(channel, "CHANNEL_RUN_PIXELS", run_pixels)
    block = make_block(DynamicBottleneck, 1, 32, 8, StageConfig(paradigm, 2), gate_scale=True)
    randomize_gates(block, seed=3)
    x = torch.randn(6, 32, 7, 9)
    masked = run(block, x, "masked")
    sparse = run(block, x, "sparse")
    assert_close_to_scale(sparse, masked)
    running = block.last_decision.channel if block.last_decision.layer is None else \
        block.last_decision.channel[block.last_decision.layer > 0]
    assert len(samples_by_channels(running)) > 1  # the samples' masks differ
    runs, union = channel.channel_runs(expand_groups(running, 2, 8), 63)
    assert (union is None) == (run_pixels == 0)
    assert count_executed_macs(block, x) == float(block.last.macs.sum())
    block.train()  # training: the MAC count stays a function of each sample's own mask
    laudnet.set_execution(block, "masked")
    block(x)
    assert block.last.macs.requires_grad
