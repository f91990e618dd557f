import math
import os

import pytest
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from torchvision.ops.misc import FrozenBatchNorm2d

from laudnet.sparse import tuning


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters, so that tests
    see the effect of BN shifts (e.g. the response of a fully skipped branch)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.weight.numel()
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    """Max abs difference at most ``tol`` relative to the output scale."""
    scale = expected.abs().max().clamp_min(1e-6)
    err = float((actual - expected).abs().max() / scale)
    assert err <= tol, f"relative max difference {err:.2e} > {tol}"


def _multiply_add(*shapes, out_shape, **kwargs) -> int:
    return 2 * math.prod(out_shape)


def _fused_convolution(*shapes, out_shape, **kwargs) -> int:
    """oneDNN's fused convolution: ``(X, W, ...)``, or ``(X, other, W, ...)`` with a residual."""
    weight = shapes[2] if isinstance(shapes[2], torch.Size) and len(shapes[2]) == 4 else shapes[1]
    return 2 * math.prod(out_shape) * math.prod(weight[1:])


@torch.no_grad()
def count_executed_macs(model: nn.Module, x: Tensor) -> int:
    """MACs actually executed by a forward pass, counted by ``torch.utils.flop_counter``
    (which counts 2 FLOPs per MAC) in convolutions and matrix products, in oneDNN's fused
    convolutions and in the in-place multiply-adds of sparse depthwise convolutions
    (:meth:`PackedConv.rows`). A first, uncounted pass makes the kernel choices (whose
    measurements would be counted too). Checks the analytic counts of the block records."""
    model(x)
    mapping = {torch.ops.aten.addcmul_: _multiply_add}
    if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        mapping[torch.ops.mkldnn._convolution_pointwise] = _fused_convolution
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.fixture(autouse=True, scope="session")
def kernel_cache(tmp_path_factory):
    """Kernel choices measured by the tests go to a temporary cache, not the user's."""
    os.environ["LAUDNET_CACHE_DIR"] = str(tmp_path_factory.mktemp("laudnet-cache"))
    tuning.clear_choices()
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run the tests on one intra-op thread. On shared 2-core machines OpenMP's second
    thread waits for a busy core and small convolutions take 10-100x longer; the tests
    check results, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
