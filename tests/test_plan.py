"""Execution plans (what the latency predictor prices) against what sparse execution runs."""

import pytest
import torch

import laudnet
from laudnet.dynamic import dynamic_blocks
from laudnet.sparse.plan import Op, axis_coverage, hit_probability


def plan_and_executed_macs(model, x, rate, seeds):
    planned = executed = 0.0
    for seed in seeds:
        laudnet.set_decisions(model, rate=rate, seed=seed)
        with torch.no_grad():
            model(x)
        for _, block in dynamic_blocks(model):
            ops = block.plan(block.last.input_shape, x.shape[0], rate)
            planned += sum(op.macs * op.count for op in ops)
            executed += float(block.last.macs.sum())
    return planned, executed


@pytest.mark.parametrize("paradigm, granularity", [("spatial", "4-2-1"), ("spatial", "1"), ("channel", "4"),
                                                   ("layer", None), ("layer+spatial", "2"), ("layer+channel", "2")])
def test_plan_macs_match_executed(paradigm, granularity):
    model = laudnet.create_model("cifar_resnet20", paradigm=paradigm, granularity=granularity).eval()
    laudnet.set_execution(model, "sparse")
    x = torch.randn(8, 3, 32, 32)
    for rate in (0.0, 1.0):  # no randomness: exact
        planned, executed = plan_and_executed_macs(model, x, rate, [0])
        assert planned == pytest.approx(executed, rel=1e-9)
    planned, executed = plan_and_executed_macs(model, x, 0.5, range(8))
    assert planned == pytest.approx(executed, rel=0.1)  # layer gates are random: expectation only


def test_plan_lists_dense_ops_for_static_execution():
    model = laudnet.create_model("resnet18", paradigm="spatial").eval()
    laudnet.set_execution(model, "static")
    block = model.layer2[0]
    ops = block.plan((64, 56, 56), 2, 0.5)
    # the shortcut's norm is folded into its convolution
    assert [op.kind for op in ops] == ["masker", "conv", "conv", "elementwise", "conv", "epilogue"]


def test_coverage_and_hit_probability():
    # 3x3 convolution, patches of 2 on an axis of 5: patch [0,1] needs [-1,2], [2,3] needs [1,4], [4] needs [3,5]
    assert axis_coverage(5, 2, [(3, 1, 1)], 5) == [1, 2, 2, 2, 2]
    assert hit_probability(1, 4, 0.5) == pytest.approx(0.5)
    assert hit_probability(3, 4, 0.5) == 1.0
    assert hit_probability(2, 4, 0.0) == 0.0
    with pytest.raises(ValueError, match="'matmul'"):
        Op("matmul", "x")
