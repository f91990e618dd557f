import pytest
import torch

import laudnet
from laudnet.dynamic import dynamic_blocks


def test_rate_bounds_relax_during_warmup():
    assert laudnet.rate_bounds(0.4, 0.0) == (0.4, 0.4)
    assert laudnet.rate_bounds(0.4, 0.5) == pytest.approx((0.2, 0.7))
    assert laudnet.rate_bounds(0.4, 3.0) == (0.0, 1.0)


def test_rate_bounds_relax_up_to_the_maximum_rate():
    assert laudnet.rate_bounds(0.4, 0.5, max_rate=0.6) == pytest.approx((0.2, 0.5))
    assert laudnet.rate_bounds(0.4, 1.0, max_rate=0.6) == pytest.approx((0.0, 0.6))
    assert laudnet.rate_bounds(0.4, 1.0, max_rate=0.3) == pytest.approx((0.0, 0.4))  # never below the target


def test_maximum_rate_penalises_blocks_above_it():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial", granularity="2-2-1").eval()
    laudnet.set_decisions(model, rate=0.9)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    free = laudnet.flops_budget_loss(model, target=0.5, progress=1.0)
    capped = laudnet.flops_budget_loss(model, target=0.5, progress=1.0, max_rate=0.6)
    rates = [b.last.rate.mean() for _, b in dynamic_blocks(model)]
    excess = torch.stack([(r - 0.6).clamp(min=0) ** 2 for r in rates]).mean()
    assert float(capped - free) == pytest.approx(float(excess), rel=1e-5) and float(excess) > 0.05


@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer", "layer+spatial", "layer+channel"])
def test_budget_loss_is_differentiable_and_training_lowers_flops(paradigm):
    torch.manual_seed(0)
    model = laudnet.create_model("cifar_resnet20", paradigm=paradigm, granularity="2-2-1", num_classes=4)
    model.train()
    gates = laudnet.gate_parameters(model)
    optimizer = torch.optim.Adam(gates, lr=0.3)
    x = torch.randn(8, 3, 32, 32)
    ratios = []
    for _ in range(12):
        model(x)
        loss = laudnet.flops_budget_loss(model, target=0.3, progress=1.0)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in gates)
        optimizer.step()
        ratios.append(float(laudnet.stats(model).flops_ratio))
    assert sum(ratios[-3:]) / 3 < ratios[0] - 0.1, ratios


def test_budget_loss_value_matches_formula():
    model = laudnet.create_model("cifar_resnet20", paradigm="layer").eval()
    laudnet.set_decisions(model, rate=1.0)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    s = laudnet.stats(model)
    loss = laudnet.flops_budget_loss(model, target=0.5, progress=0.0)
    # every block at rate 1 is 0.5 above its upper bound 0.5
    assert float(loss) == pytest.approx(0.25 + (s.flops_ratio - 0.5) ** 2)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        laudnet.flops_budget_loss(model, target=0.0)
