"""The pixel-row kernels against direct PyTorch computations."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from laudnet.sparse.extension import extension
from laudnet.sparse.packed import PackedConv, select_channels
from laudnet.sparse.pixels import (compact_index, from_rows, gather_taps, neighbor_table, pixel_rows,
                                   receptive_mask)

from conftest import randomize_norms


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (5, 2, 2), (1, 1, 0)])
@pytest.mark.parametrize("size", [(7, 7), (8, 5)])
def test_receptive_mask_is_the_exact_set_of_needed_input_pixels(kernel, stride, padding, size):
    out_h = (size[0] + 2 * padding - kernel) // stride + 1
    out_w = (size[1] + 2 * padding - kernel) // stride + 1
    mask = (torch.rand(2, out_h, out_w) < 0.3).float()
    # brute force: an input pixel is needed iff perturbing it changes an active output
    ones = torch.ones(1, 1, kernel, kernel)
    needed = F.conv_transpose2d(mask[:, None], ones, stride=stride, padding=padding,
                                output_padding=0)[:, 0]
    needed = F.pad(needed, (0, size[1] - needed.shape[-1], 0, size[0] - needed.shape[-2])) > 0
    assert torch.equal(receptive_mask(mask, kernel, stride, padding, size) > 0, needed)


def test_receptive_mask_carries_gradient():
    mask = torch.zeros(1, 4, 4, requires_grad=True)
    (receptive_mask(mask + 1.0, 3, 1, 1, (4, 4)).sum()).backward()
    assert mask.grad is not None and float(mask.grad.abs().sum()) > 0


@pytest.mark.parametrize("groups", [1, 4, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_gathered_gemm_equals_convolution(groups, stride):
    conv = nn.Conv2d(8, 8, 3, stride, 1, groups=groups, bias=groups == 4)
    norm = randomize_norms(nn.BatchNorm2d(8)).eval()
    x = torch.randn(2, 8, 9, 6).contiguous(memory_format=torch.channels_last)
    expected = norm(conv(x))
    packed = PackedConv(conv, norm)
    out_h, out_w = expected.shape[-2:]
    table = neighbor_table(2, (9, 6), (out_h, out_w), 3, stride, 1, 1, x.device)
    rows = torch.tensor([0, 3, out_h * out_w + 1, 2 * out_h * out_w - 1])
    got = packed.rows(gather_taps(pixel_rows(x), table[rows]))
    torch.testing.assert_close(got, pixel_rows(expected)[rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_rows(packed.rows(gather_taps(pixel_rows(x), table)), 2, out_h, out_w),
                               expected, rtol=1e-5, atol=1e-5)


def test_compact_index_maps_padding_and_missing_rows_to_the_zero_slot():
    index = compact_index(torch.tensor([2, 5]), total=7)
    assert index.tolist() == [2, 2, 0, 2, 2, 1, 2, 2]
    source = torch.tensor([[1.0], [2.0]])
    assert gather_taps(source, index[torch.tensor([[2, 7, 5]])]).flatten().tolist() == [1.0, 0.0, 2.0]


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_sliced_convolution_equals_the_masked_one(groups):
    conv = nn.Conv2d(8, 8, 3, 1, 1, groups=groups, bias=False)
    norm = randomize_norms(nn.BatchNorm2d(8)).eval()
    channels = torch.tensor([2, 3, 6, 7])  # whole groups for groups = 4
    if groups == 8:
        channels = torch.tensor([0, 5, 6])
    x = torch.randn(1, 8, 5, 5)
    keep = torch.zeros(8)
    keep[channels] = 1
    expected = norm(conv(x * keep[:, None, None]))[:, channels]
    part = PackedConv(conv, norm).sliced(channels, channels)
    got = part.map_rows(x[:, channels])
    torch.testing.assert_close(got, pixel_rows(expected), rtol=1e-5, atol=1e-5)
    table = neighbor_table(1, (5, 5), (5, 5), 3, 1, 1, 1, x.device)
    x_rows = pixel_rows(x[:, channels].contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(part.rows(gather_taps(x_rows, table)), pixel_rows(expected), rtol=1e-5, atol=1e-5)
    if groups == 4:
        with pytest.raises(ValueError, match="whole groups"):
            PackedConv(conv, norm).sliced(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("channels", [[5, 0, 9, 3], list(range(2, 40)), list(range(0, 64, 2)),
                                      list(range(8, 24)) + [40, 41], []])
def test_column_selection_equals_index_select(channels):
    """The C++ selection of the last dimension (element by element, or by runs of adjacent
    channels) copies exactly what ``index_select`` does."""
    weight = torch.randn(6, 3, 3, 64)
    index = torch.tensor(channels, dtype=torch.long)
    assert torch.equal(select_channels(weight, 3, index), weight.index_select(3, index))
    kernels = extension()
    if kernels is None:
        pytest.skip("C++ sparse kernels unavailable")
    assert torch.equal(kernels.select_columns(weight.reshape(-1, 64), index), weight.reshape(-1, 64)[:, index])
    with pytest.raises(RuntimeError, match="column 64 out of range for 64 columns"):
        kernels.select_columns(weight.reshape(-1, 64), torch.tensor([3, 64]))


@pytest.mark.parametrize("block_type, stride", [("bottleneck", 1), ("bottleneck", 2), ("basic", 1), ("basic", 2)])
@pytest.mark.parametrize("patch, rate", [(1, 0.3), (2, 0.5), (3, 0.9), (4, 1.0), (2, 0.0)])
def test_cpp_rows_and_taps_equal_the_pytorch_ones(block_type, stride, patch, rate):
    from laudnet.blocks import DynamicBasicBlock, DynamicBottleneck, FixedDecisions
    from laudnet.engine.spatial import DENSE_FRACTION, unit_masks
    from laudnet.config import StageConfig
    from laudnet.sparse.extension import extension

    kernels = extension()
    if kernels is None:
        pytest.skip("C++ sparse kernels unavailable")
    block_cls = DynamicBottleneck if block_type == "bottleneck" else DynamicBasicBlock
    down = nn.Conv2d(16, 16 * block_cls.expansion, 1, stride) if stride == 2 or block_type == "bottleneck" else None
    block = block_cls(16, 16 if block_type == "basic" else 4, stride, down, config=StageConfig("spatial", patch))
    x = torch.randn(3, 16, 11, 9)
    decision = FixedDecisions(rate, seed=4).decide(block, x)
    sizes = block.branch.sizes(11, 9)
    _, rows = unit_masks(block.branch, block._spatial_mask(decision, sizes[-1]), sizes, with_rows=True)
    active, cpp_rows, cpp_taps = kernels.spatial_rows(decision.spatial, patch, block.branch.geometry(11, 9), DENSE_FRACTION)
    assert torch.equal(active, block._spatial_mask(decision, sizes[-1]).reshape(-1).nonzero().squeeze(1))
    for i, (unit, mine, theirs, taps) in enumerate(zip(block.units(), rows, cpp_rows, cpp_taps)):
        assert (mine is None) == (theirs is None)
        if mine is None:
            continue
        assert torch.equal(mine, theirs)
        conv = unit.conv
        if conv.kernel_size[0] == 1 and conv.stride[0] == 1:
            continue
        table = neighbor_table(3, sizes[i], sizes[i + 1], conv.kernel_size[0], conv.stride[0], conv.padding[0], 1,
                               x.device)
        expected = table.index_select(0, mine)
        if i > 0 and rows[i - 1] is not None:
            expected = compact_index(rows[i - 1], 3 * sizes[i][0] * sizes[i][1])[expected]
        assert torch.equal(taps, expected)


@pytest.mark.parametrize("backend", ["aten", "onednn"])
def test_static_layers_run_packed_and_equal_their_modules(backend):
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.ops.misc import Conv2dNormActivation

    from laudnet.engine.static import StaticLayers
    from laudnet.sparse import tuning
    from laudnet.sparse.packed import onednn_available

    if backend == "onednn" and not onednn_available(torch.zeros(1)):
        pytest.skip("oneDNN unavailable")
    layers = nn.Sequential(Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.ReLU6), nn.MaxPool2d(2),
                           InvertedResidual(8, 16, 2, 6), nn.Conv2d(16, 4, 1))
    randomize_norms(layers).eval()
    x = torch.randn(2, 3, 21, 19)
    static = StaticLayers()
    with torch.no_grad(), tuning.forced_backend(backend):
        got = static.run((layers,), x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, layers(x), rtol=1e-4, atol=1e-4)
    # conv+norm+act, pool, expansion, depthwise, projection (no activation), the lone convolution
    assert [step[0] for step in static._plan((layers,))] == ["packed", "module", "packed", "packed", "packed", "module"]
