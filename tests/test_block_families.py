"""The contract of every dynamic block family beyond ResNet (RegNet with and without
squeeze-excitation, MobileNetV2 inverted residuals): sparse execution computes what masked
execution computes for the same decisions, and the analytic MACs of a forward pass equal
those torch's flop counter sees the sparse path execute. A new family is one line of
``FAMILIES``."""

import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.regnet import ResBottleneckBlock

import laudnet
from laudnet.blocks import DynamicBlock, DynamicInvertedResidual, DynamicResBottleneckBlock, FixedDecisions, Unit
from laudnet.config import StageConfig
from laudnet.sparse import upsample_mask

from conftest import assert_close_to_scale, count_executed_macs, randomize_norms


def regnet_y(config, stride, gate_scale=False):
    """RegNet-Y block: grouped 3×3 (groups of 8 of 24 channels) and SE."""
    return DynamicResBottleneckBlock(16, 24, stride, group_width=8, se_ratio=0.25, config=config, gate_scale=gate_scale)


def regnet_x(config, stride, gate_scale=False):
    """RegNet-X-like block: no SE, bottleneck 0.5 (12 inner channels in groups of 4)."""
    return DynamicResBottleneckBlock(24, 24, stride, group_width=4, bottleneck_multiplier=0.5, config=config,
                                     gate_scale=gate_scale)


def inverted_residual(config, stride, gate_scale=False):
    """MobileNetV2 block with expansion 6: 8 → 48 hidden channels → 8."""
    return DynamicInvertedResidual(8, 8, stride, 6, config=config, gate_scale=gate_scale)


def inverted_residual_t1(config, stride, gate_scale=False):
    """MobileNetV2 block without expansion: the depthwise convolution is the first unit."""
    return DynamicInvertedResidual(12, 12, stride, 1, config=config, gate_scale=gate_scale)


# factory, input channels, strides, channel granularities (the last group may be partial)
FAMILIES = {
    "regnet_y": (regnet_y, 16, (1, 2), (8, 16)),
    "regnet_x": (regnet_x, 24, (1, 2), (4, 8)),
    "inverted_residual": (inverted_residual, 8, (1,), (1, 5, 16)),
    "inverted_residual_t1": (inverted_residual_t1, 12, (1,), (1, 5)),
}
SPATIAL = [("spatial", s) for s in (1, 2, 3, 4, 7, 8)] + [("layer+spatial", s) for s in (1, 3, 8)]
CASES = [(family, stride, paradigm, granularity)
         for family, (_, _, strides, channel_sizes) in FAMILIES.items()
         for stride in strides
         for paradigm, granularity in SPATIAL + [("layer", None)]
         + [("channel", g) for g in channel_sizes] + [("layer+channel", channel_sizes[-1])]]



def make(family, config, stride, gate_scale=False):
    factory, channels, _, _ = FAMILIES[family]
    return randomize_norms(factory(config, stride, gate_scale), seed=stride).eval(), channels


def run(block, x, mode):
    block.execution = mode
    with torch.no_grad():
        return block(x)


@pytest.mark.parametrize("family, stride, paradigm, granularity", CASES)
def test_sparse_equals_masked_and_macs_are_executed(family, stride, paradigm, granularity):
    block, channels = make(family, StageConfig(paradigm, granularity), stride)
    size = (11, 9) if stride == 1 else (13, 15)
    for batch, rate in itertools.product((1, 5), (0.0, 0.3, 1.0)):
        x = torch.randn(batch, channels, *size)
        block.fixed = FixedDecisions(rate, seed=batch)
        masked = run(block, x, "masked")
        masked_record = block.last
        sparse = run(block, x, "sparse")
        assert_close_to_scale(sparse, masked)
        assert torch.equal(block.last.rate, masked_record.rate)
        assert torch.equal(block.last.macs, masked_record.macs)
        block.execution = "sparse"
        assert count_executed_macs(block, x) == float(block.last.macs.sum()), (batch, rate)


def randomize_gates(block, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for masker in block.maskers():
            for name, p in masker.named_parameters():
                p.copy_(torch.zeros(p.shape) if name.endswith("bias") else torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("paradigm, granularity", [("spatial", 2), ("spatial", 3), ("channel", None), ("layer", None),
                                                   ("layer+spatial", 2), ("layer+channel", None)])
def test_sparse_equals_masked_with_gates_and_scale(family, paradigm, granularity):
    _, channels, strides, channel_sizes = FAMILIES[family]
    granularity = granularity or channel_sizes[0]
    block, _ = make(family, StageConfig(paradigm, granularity), strides[-1], gate_scale=True)
    x = torch.randn(6, channels, 10, 10) * 3
    for seed in range(30):  # gates that mix on and off decisions in the batch
        randomize_gates(block, seed)
        masked = run(block, x, "masked")
        if 0 < float(block.last.rate.sum()) and (block.last.rate < 1).any():
            break
    else:
        pytest.fail("no seed gave mixed decisions")
    assert_close_to_scale(run(block, x, "sparse"), masked)


def torchvision_block(block: DynamicResBottleneckBlock, stride: int) -> ResBottleneckBlock:
    f = block.f
    reference = ResBottleneckBlock(f.a[0].in_channels, f.c[0].out_channels, stride, nn.BatchNorm2d, nn.ReLU,
                                   f.b[0].out_channels // f.b[0].groups, 1.0, 0.25)
    reference.load_state_dict(laudnet.backbone_state_dict(block))
    return reference.eval()


@pytest.mark.parametrize("stride", [1, 2])
def test_open_gates_reduce_to_torchvision_block_with_se(stride):
    for paradigm, granularity in [("spatial", 3), ("channel", 8), ("layer", None), ("layer+spatial", 2)]:
        block, _ = make("regnet_y", StageConfig(paradigm, granularity), stride)
        reference = torchvision_block(block, stride)
        x = torch.randn(3, 16, 11, 9)
        with torch.no_grad():
            expected = reference(x)
        block.fixed = FixedDecisions(1.0)
        for mode in ("static", "masked", "sparse"):
            torch.testing.assert_close(run(block, x, mode), expected, msg=f"{paradigm} {mode}")


def test_se_means_are_taken_over_the_active_positions():
    """The definition, written out: SE pools ``sum(b * up(M)) / max(sum(up(M)), 1)``."""
    block, _ = make("regnet_y", StageConfig("spatial", 2), 2)
    x = torch.randn(3, 16, 13, 15)
    block.fixed = FixedDecisions(0.3, seed=4)
    out = run(block, x, "masked")
    with torch.no_grad():
        mask = upsample_mask(block.fixed.decide(block, x).spatial, 2, 7, 8)[:, None]
        f = block.f
        b = f.b(f.a(x))
        pooled = (b * mask).sum(dim=(2, 3), keepdim=True) / mask.sum(dim=(2, 3), keepdim=True).clamp_min(1)
        excitation = torch.sigmoid(f.se.fc2(F.relu(f.se.fc1(pooled))))
        expected = F.relu(block.proj(x) + mask * f.c(b * excitation))
    torch.testing.assert_close(out, expected)
    assert_close_to_scale(run(block, x, "sparse"), expected)


def test_se_sees_skipped_channels_as_zeros():
    block, _ = make("regnet_y", StageConfig("channel", 8), 1)
    x = torch.randn(2, 16, 9, 9)
    block.fixed = FixedDecisions(0.5, seed=1)
    out = run(block, x, "masked")
    with torch.no_grad():
        keep = block.fixed.decide(block, x).channel.repeat_interleave(8, dim=1)[:, :, None, None]
        f = block.f
        b = f.b(f.a(x) * keep) * keep
        expected = F.relu(block.proj(x) + f.c(f.se(b)))
    torch.testing.assert_close(out, expected)
    assert_close_to_scale(run(block, x, "sparse"), expected)


def test_residual_sum_of_inverted_residual_has_no_activation():
    block, _ = make("inverted_residual", StageConfig("spatial", 2), 1)
    x = torch.randn(2, 8, 6, 6)
    block.fixed = FixedDecisions(0.0)
    for mode in ("masked", "sparse"):
        assert torch.equal(run(block, x, mode), x)  # negative inputs pass unchanged


def test_channel_granularity_must_cover_whole_conv_groups():
    with pytest.raises(ValueError, match="granularity 4 splits the 8-channel groups.*multiples of 8"):
        regnet_y(StageConfig("channel", 4), 1)
    regnet_y(StageConfig("spatial", 4), 1)  # spatial skipping has no such constraint


def test_only_residual_inverted_residuals_are_dynamic():
    with pytest.raises(ValueError, match="residual connection.*stride 2, 8 -> 8"):
        DynamicInvertedResidual(8, 8, 2, 6)
    with pytest.raises(ValueError, match="stride 1, 8 -> 16"):
        DynamicInvertedResidual(8, 16, 1, 6)


class SqueezeBeforeThreeByThree(DynamicBlock):
    def __init__(self):
        super().__init__()
        from torchvision.ops.misc import SqueezeExcitation
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.se = SqueezeExcitation(8, 4)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.downsample = None
        self.setup_gates(StageConfig("spatial", 2), 8, 8, 1)

    def units(self):
        return [Unit(self.conv1, self.bn1, F.relu, self.se), Unit(self.conv2, self.bn2, None)]


def test_squeeze_excitation_must_see_the_output_grid():
    with pytest.raises(ValueError, match="squeeze-excitation of unit 0.*1x1 with stride 1"):
        SqueezeBeforeThreeByThree()
