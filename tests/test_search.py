"""Latency-guided search and the latency budget: output format, determinism, agreement with
the predictor, recommendations that build, bad input, and a differentiable latency loss that
gate-only training lowers. No timing is measured or asserted."""

import json

import pytest
import torch

import laudnet
from laudnet.dynamic import dynamic_blocks
from laudnet.latency.hardware import load_hardware, save_hardware
from laudnet.latency.predictor import predict_walk, walk_network
from laudnet.latency.table import BlockPricer, latency_table
from laudnet.search import SearchSpace, channel_candidates, spatial_candidates
from laudnet.cli import main
from laudnet.train.losses import budget_loss, latency_budget_loss


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_user_profiles(tmp_path, monkeypatch):
    """Tests see the shipped profiles only (and the ones they write themselves)."""
    monkeypatch.setenv("LAUDNET_PROFILE_DIR", str(tmp_path / "profiles"))


@pytest.fixture(scope="module")
def resnet18():
    return SearchSpace("resnet18")


def _meta(arch, **kwargs):
    with torch.device("meta"):
        return laudnet.create_model(arch, **kwargs)


def _predicted(arch, design, hardware, batch, input_size):
    """The predictor's latency of a design built from the search's strings, each block at
    its stage's rate."""
    model = _meta(arch, paradigm=design.paradigm, granularity=design.granularity, input_size=input_size)
    names = {id(block): name for name, block in dynamic_blocks(model)}
    rates = {names[id(m)]: rate for stage, rate in zip(model.stages(), design.rates)
             for m in stage.modules() if id(m) in names}
    return predict_walk(walk_network(model, input_size), hardware, batch, rates=rates).total_ms


# --------------------------------------------------------------------------------- candidates
def test_candidates_are_the_sensible_granularities():
    assert spatial_candidates(56) == [1, 2, 4, 7, 8, 14, 16, 28, 32]
    assert spatial_candidates(7) == [1, 2, 4]
    assert spatial_candidates(1) == []
    assert channel_candidates(64) == [1, 2, 4, 8]
    assert channel_candidates(48, group_width=24) == [24, 48]
    assert channel_candidates(4) == [1, 2, 4]


def test_regnet_channel_groups_are_multiples_of_the_group_width():
    space = SearchSpace("regnet_y_400mf")
    for options in space.options:
        groups = [g for paradigm, g in options if paradigm == "channel"]
        assert groups and all(g % 8 == 0 for g in groups)
        assert any(p == "spatial" for p, _ in options) and ("layer", None) in options


# --------------------------------------------------------------------------------- search
def test_search_output_format_and_determinism(resnet18):
    first = resnet18.search("v100", 8, 0.5)
    again = laudnet.search(arch="resnet18", hardware="v100", batch_size=8, target=0.5)
    assert first.to_dict() == again.to_dict()
    assert json.loads(json.dumps(first.to_dict()))["paradigm"] == first.paradigm
    words, values = first.paradigm.split("-"), first.granularity.split("-")
    assert len(words) == len(values) == 4
    assert set(words) <= {"spatial", "channel", "layer"} and all(v.isdigit() for v in values)
    assert first.best == first.pareto[0] and first.latency_ms == min(d.latency_ms for d in first.pareto)
    latencies = [d.latency_ms for d in first.pareto]
    flops = [d.flops_ratio for d in first.pareto]
    assert latencies == sorted(latencies) and all(a > b for a, b in zip(flops, flops[1:]))  # a real front
    assert first.latency_ratio == pytest.approx(first.latency_ms / first.static_ms)
    for stage, choices in enumerate(first.stages, start=1):
        assert [c.latency_ms for c in choices] == sorted(c.latency_ms for c in choices)
        assert all(c.stage == stage and c.rate == 0.5 for c in choices)
    assert "recommended: --paradigm " + first.paradigm in first.summary()
    assert "UNCALIBRATED" in first.summary()


def test_restricted_search_and_finest_worthwhile_granularity(resnet18):
    spatial = resnet18.search("jetson_tx2", 1, 0.5, paradigms=("spatial",))
    assert set(spatial.paradigm.split("-")) == {"spatial"}
    for choices in spatial.stages:  # a coarser S is kept only if it is 1 % faster than every finer one
        ordered = sorted(choices, key=lambda c: c.granularity)
        for finer, coarser in zip(ordered, ordered[1:]):
            assert coarser.latency_ms < 0.99 * min(c.latency_ms for c in ordered if c.granularity < coarser.granularity)
    everything = resnet18.search("jetson_tx2", 1, 0.5, tolerance=0.0)
    assert everything.latency_ms <= spatial.latency_ms
    layer = resnet18.search("jetson_tx2", 1, 0.5, paradigms=("layer",))
    assert layer.paradigm == "layer-layer-layer-layer" and len(layer.pareto) == 1


@pytest.mark.parametrize("arch, hardware, batch, budget", [
    ("resnet18", "v100", 16, "rate"), ("resnet18", "x86_avx2", 1, "flops"),
    ("regnet_y_400mf", "jetson_tx2", 1, "flops"), ("mobilenet_v2", "t4", 4, "rate"),
    ("cifar_resnet20", "x86_avx2", 2, "rate")])
def test_recommendations_build_and_the_predictor_agrees(arch, hardware, batch, budget):
    result = laudnet.search(arch=arch, hardware=hardware, batch_size=batch, target=0.4, budget=budget)
    model = laudnet.create_model(arch, paradigm=result.paradigm, granularity=result.granularity,
                                 input_size=result.input_size)
    assert model.paradigm == result.paradigm
    for design in result.pareto[:3]:  # each built (on the meta device) and priced by the predictor
        assert _predicted(arch, design, hardware, batch, result.input_size) == pytest.approx(design.latency_ms,
                                                                                            rel=1e-9)
    if budget == "flops":  # every stage lands near the FLOPs target
        for choices in result.stages:
            assert all(abs(c.flops_ratio - 0.4) <= 0.1 for c in choices)


def test_search_works_with_a_calibrated_local_profile(tmp_path):
    with pytest.raises(ValueError, match="run `laudnet latency calibrate`"):
        laudnet.search(arch="resnet18", hardware="local")
    data = load_hardware("x86_avx2").to_dict()
    data.update(name="local", calibrated=True)
    save_hardware(data, tmp_path / "profiles" / "local.json")
    result = laudnet.search(arch="resnet18", hardware="local", batch_size=1, target=0.5)
    assert result.hardware == "local" and "calibrated on this machine" in result.note


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="resnet5"), "unknown model 'resnet5'"),
    (dict(hardware="p100"), "unknown hardware 'p100'"),
    (dict(target=0.0), "target activation rate is 0.0"),
    (dict(target=1.5, budget="flops"), "target FLOPs ratio is 1.5"),
    (dict(budget="energy"), "budget 'energy' is unknown; allowed: rate, flops"),
    (dict(paradigms=("spatial", "pixel")), "paradigm 'pixel' cannot be searched"),
    (dict(batch_size=0), "batch size must be a positive integer, got 0"),
    (dict(tolerance=1.0), "tolerance is 1.0"),
])
def test_bad_search_input_is_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        laudnet.search(**kwargs)


def test_cli_searches_and_refuses_bad_input_in_one_line(capsys, tmp_path):
    out = tmp_path / "search.json"
    assert main(["search", "--arch", "resnet18", "--hardware", "t4", "--batch-size", "8", "--target", "0.5",
                 "--paradigms", "spatial,layer", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["hardware"] == "t4" and set(printed["paradigm"].split("-")) <= {"spatial", "layer"}
    laudnet.create_model("resnet18", paradigm=printed["paradigm"], granularity=printed["granularity"])
    for argv, message in [(["--hardware", "p100"], "unknown hardware 'p100'"),
                          (["--target", "2"], "target activation rate is 2.0"),
                          (["--paradigms", "spatial,pixel"], "paradigm 'pixel'"),
                          (["--arch", "alexnet9"], "unknown model 'alexnet9'")]:
        assert main(["search", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("laudnet: error:") and message in err


# --------------------------------------------------------------------------------- latency budget
def test_latency_table_interpolates_the_predictor():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial-channel-layer", granularity="2-4-1")
    table = latency_table(model, "jetson_tx2", batch_size=4, input_size=32)
    assert latency_table(model, "jetson_tx2", batch_size=4, input_size=32) is table  # cached
    walk = walk_network(model, 32)
    for rate in (0.0, 0.25, 0.5, 1.0):  # grid points: the predictor itself
        assert table.uniform_ms(rate) == pytest.approx(predict_walk(walk, "jetson_tx2", 4, rates=rate).total_ms,
                                                       rel=1e-9)
    assert table.uniform_ms(0.3) == pytest.approx(0.6 * table.uniform_ms(0.25) + 0.4 * table.uniform_ms(0.375))
    rates = torch.full((len(table.names),), 0.3, dtype=torch.float64, requires_grad=True)
    table.predict(rates).backward()
    slopes = (table.block_ms[:, 3] - table.block_ms[:, 2]) * 8  # between rates 0.25 and 0.375
    assert torch.allclose(rates.grad, slopes)
    budget = table.uniform_ms(0.5)
    assert table.rate_for(budget) == pytest.approx(0.5, abs=2e-3)
    with pytest.raises(ValueError, match="below the .* ms predicted on jetson_tx2 .* with every gate closed"):
        table.rate_for(0.5 * table.uniform_ms(0.0))


def test_block_prices_are_cached_per_shape():
    model = _meta("resnet50", paradigm="spatial", granularity="2")
    pricer = BlockPricer("v100", 8)
    walk = walk_network(model)
    for segment in walk.blocks:
        pricer(segment.block, segment.input_shape, 0.5)
    assert len(pricer._cache) == 8  # per stage: the first block and the others (ResNet-50 has 16 blocks)


@pytest.mark.parametrize("paradigm, hardware, batch, progress", [
    ("layer", "x86_avx2", 1, 1.0),  # bounds fully relaxed: the latency term alone
    ("layer", "v100", 64, 1.0),
    ("spatial", "v100", 64, 0.0), ("channel", "v100", 64, 0.0), ("layer+spatial", "v100", 64, 0.0)])
def test_latency_budget_loss_is_differentiable_and_gate_training_lowers_latency(paradigm, hardware, batch, progress):
    torch.manual_seed(0)
    model = laudnet.create_model("cifar_resnet20", paradigm=paradigm, granularity="2-2-1", num_classes=4)
    model.train()
    x = torch.randn(8, 3, 32, 32)
    gates = laudnet.gate_parameters(model)
    optimizer = torch.optim.Adam(gates, lr=0.3)
    model(x)
    table = latency_table(model, hardware, batch_size=batch)
    budget = table.uniform_ms(0.3)
    predicted = []
    for step in range(12):
        model(x)
        loss = laudnet.latency_budget_loss(model, budget, hardware, batch_size=batch, progress=progress)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in gates)
        if step == 0:  # later, saturated gates may legitimately stop learning
            assert all(float(p.grad.abs().sum()) > 0 for p in gates[-2:])
        optimizer.step()
        predicted.append(float(table.network_ms(model).detach()))
    assert sum(predicted[-3:]) / 3 < predicted[0] - 0.3 * (predicted[0] - budget), predicted


def test_budget_loss_factory_and_train_options(capsys, tmp_path):
    model = laudnet.create_model("cifar_resnet20", paradigm="layer").train()
    model(torch.randn(2, 3, 32, 32))
    flops = budget_loss(target=0.5)
    assert float(flops(model, 1.0).detach()) == pytest.approx(float(laudnet.flops_budget_loss(model, 0.5, 1.0).detach()))
    budget = latency_table(model, "x86_avx2", 1).uniform_ms(0.5)
    latency = budget_loss(budget_ms=budget, hardware="x86_avx2", batch_size=1)
    assert float(latency(model, 1.0).detach()) == pytest.approx(
        float(latency_budget_loss(model, budget, "x86_avx2", 1, 1.0).detach()))

    for settings, message in [(dict(budget_ms=5.0), "give --hardware NAME"),
                              (dict(hardware="v100"), "give --budget-ms too"),
                              (dict(budget_ms=-1.0, hardware="v100"), "latency budget in milliseconds must be .* greater than 0"),
                              (dict(budget_ms=5.0, hardware="p100"), "unknown hardware 'p100'"),
                              (dict(budget_ms=5.0, hardware="v100", batch_size=0), "batch size"),
                              (dict(target=0.0), "FLOPs target must be a finite number in")]:
        with pytest.raises(ValueError, match=message):
            budget_loss(**settings)
    with pytest.raises(ValueError, match="below the"):
        latency_budget_loss(model, 1e-6, "x86_avx2", 1)
    for argv, message in [(["--budget-ms", "5", "--hardware", "p100"], "unknown hardware 'p100'"),
                          (["--hardware", "v100"], "give --budget-ms too"),
                          (["--budget-ms", "5", "--hardware", "v100", "--budget-batch-size", "0"], "batch size")]:
        assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
