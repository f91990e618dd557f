import os

import pytest
import torch
from torch import nn

from laudnet.sparse import tuning


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters, so that tests
    see the effect of BN shifts (e.g. the response of a fully skipped branch)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
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
