import math

import pytest
import torch

import laudnet
from laudnet.gates import ChannelMasker, LayerMasker, SpatialMasker, decide


def test_gumbel_straight_through_is_hard_forward_and_soft_backward():
    logits = torch.zeros(1000, requires_grad=True)
    hard = decide(logits, temperature=1.0, training=True)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0.4 < float(hard.detach().mean()) < 0.6  # sigmoid(0) = 0.5
    hard.sum().backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


def test_eval_decisions_are_deterministic_thresholds():
    logits = torch.tensor([-1.0, -1e-3, 1e-3, 2.0])
    assert decide(logits, 0.1, training=False).tolist() == [0, 0, 1, 1]


def test_keep_probability_under_gumbel_is_sigmoid_of_logit():
    torch.manual_seed(1)
    logits = torch.full((20000,), 1.0)
    assert abs(float(decide(logits, 0.5, True).mean()) - 1 / (1 + math.exp(-1))) < 0.02


def test_maskers_start_by_keeping_everything():
    x = torch.randn(4, 32, 13, 13) * 100
    spatial = SpatialMasker(32, granularity=4, stride=2)
    assert spatial(x).shape == (4, 2, 2)  # ceil(ceil(13 / 2) / 4)
    assert bool((spatial(x) > 0).all())
    logits, scale = ChannelMasker(32, channels=10, granularity=4, scale=True)(x)
    assert logits.shape == (4, 3) and bool((logits > 0).all())  # groups 4, 4, 2
    torch.testing.assert_close(scale, torch.ones(4, 3))
    logits, scale = LayerMasker(32)(x)
    assert logits.shape == (4, 1) and scale is None
    assert ChannelMasker(256, 64, 4).fc1.out_features == 16 and ChannelMasker(1024, 64, 4).fc1.out_features == 64


@pytest.mark.parametrize("kind", ["exponential", "linear", "cosine"])
def test_temperature_schedules_anneal_from_start_to_end(kind):
    tau = laudnet.temperature_schedule(kind, start=5.0, end=0.1)
    values = [tau(p / 10) for p in range(11)]
    assert values[0] == pytest.approx(5.0) and values[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert tau(2.0) == pytest.approx(0.1)


def test_exponential_schedule_is_geometric():
    tau = laudnet.temperature_schedule()
    assert tau(0.5) == pytest.approx(math.sqrt(5.0 * 0.1))


def test_bad_schedule_and_temperature():
    with pytest.raises(ValueError, match="'step'.*exponential, linear, cosine"):
        laudnet.temperature_schedule("step")
    with pytest.raises(ValueError, match="positive"):
        laudnet.set_temperature(laudnet.create_model("cifar_resnet20"), 0.0)


def test_set_temperature_reaches_every_masker():
    model = laudnet.create_model("cifar_resnet20", paradigm="layer+spatial-channel-layer")
    laudnet.set_temperature(model, 0.7)
    maskers = [m for m in model.modules() if isinstance(m, laudnet.gates.Masker)]
    assert len(maskers) == 3 * 2 + 3 + 3 and all(m.temperature == 0.7 for m in maskers)


def test_fixed_decisions_are_exact_reproducible_and_clearable():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial-channel-layer", granularity="2-1-1").eval()
    x = torch.randn(8, 3, 32, 32)
    laudnet.set_decisions(model, rate=0.3, seed=5)
    with torch.no_grad():
        first = model(x)
        rates = laudnet.stats(model).rates
        second = model(x)
    assert torch.equal(first, second)
    assert torch.equal(rates["layer1.0"], torch.full((8,), 77 / 256))  # round(0.3 × 16 × 16)
    assert torch.equal(rates["layer2.0"], torch.full((8,), 10 / 32))   # round(0.3 × 32 groups)
    assert set(rates["layer3.0"].tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        laudnet.set_decisions(model, rate=1.5)
    laudnet.clear_decisions(model)
    with torch.no_grad():
        model(x)
    assert all(r == 1.0 for r in laudnet.stats(model).mean_rates.values())
