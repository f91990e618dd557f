"""The learned correction of a calibrated CPU profile: pieces of a walked network, their
timing inside forward passes, the correction trained on measured pieces and applied by the
predictor. Measured times enter only as synthetic data with known factors, or as the
structure of real timings (never their values)."""

import dataclasses
import functools
import json
import math
import random
import time

import numpy as np
import pytest
import torch
import torchvision

import laudnet
from laudnet.cli import main
from laudnet.dynamic import dynamic_blocks, set_decisions, stats
from laudnet.latency.hardware import load_hardware, save_hardware
from laudnet.latency.learned import LearnedCorrection, held_out_predictions, network_moods
from laudnet.latency.predictor import block_type, piece_plans, predict_walk, price_block, walk_network
from laudnet.latency.samples import Sample
from laudnet.measure import pieces
from laudnet.measure import validate_networks as validate_networks_module
from laudnet.measure.calibrate import calibrate, extend_calibration
from laudnet.measure.pieces import CALIBRATION_SIZES, _durations, calibration_networks, measure_pieces, piece_timer
from laudnet.measure.validate_networks import (NETWORK_ARCHS, NETWORK_BATCHES, NETWORK_PARADIGMS, NetworkConfig,
                                              predict_network, validate_networks)

FACTORS = {"packed layers": 1.3, "layers": 0.8, "static": 0.7, "spatial": 1.6, "channel": 2.0}
"""Measured / analytic time of each kind of piece in the synthetic calibrations."""


@pytest.fixture(autouse=True)
def _no_user_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUDNET_PROFILE_DIR", str(tmp_path / "profiles"))


@functools.lru_cache(maxsize=None)
def _walks(size: int) -> dict:
    with torch.device("meta"):
        walks = {p: walk_network(laudnet.create_model("resnet18", paradigm=p), size) for p in ("spatial", "channel")}
        walks["static"] = walk_network(torchvision.models.resnet18(), size)
    return walks


@functools.lru_cache(maxsize=None)
def _synthetic_profile(seed: int = 0, networks: int = 12):
    """``x86_avx2`` with network pieces whose measured time is the analytic one times the
    factor of their kind (2 % noise)."""
    hw = load_hardware("x86_avx2")
    rng = random.Random(seed)
    samples = []
    for n in range(networks):
        size, batch = rng.choice([64, 96, 128]), rng.choice([1, 2, 4])
        for name, walk in _walks(size).items():
            rates = {s.name: rng.uniform(0.1, 1.0) for s in walk.blocks}
            for plan in piece_plans(walk, batch, rates, "sparse"):
                ms = sum(c.total_ms for c in plan.segment_costs(hw)) * FACTORS[plan.kind] * math.exp(rng.gauss(0, 0.02))
                samples.append(Sample("piece", plan.ops, ms, dict(kind=plan.kind, batch=batch, rate=plan.rate,
                                                                   dynamic=plan.dynamic, fused=plan.fused,
                                                                   network=f"{name}-{n}")))
    return dataclasses.replace(hw, name="synthetic", samples=tuple(s.to_dict() for s in samples))


def test_walk_pieces_are_blocks_and_the_static_runs_between_them():
    walks = _walks(64)
    for name, walk in walks.items():
        pieces = walk.pieces()
        assert [i for p in pieces for i in p.indices] == list(range(len(walk.segments)))
        assert [p.anchor for p in pieces] == [False] + [True] * 8 + [False]
        assert [walk.segments[i].name for i in pieces[0].indices] == ["conv1", "bn1", "relu", "maxpool"]
        assert walk.segments[pieces[1].indices[0]].name == "layer1.0"
    kinds = {name: [p.kind for p in piece_plans(walk, 2, {s.name: 0.5 for s in walk.blocks}, "sparse")]
             for name, walk in walks.items()}
    assert kinds["spatial"] == ["packed layers"] + ["spatial"] * 8 + ["packed layers"]
    assert kinds["static"] == ["layers"] + ["static"] * 8 + ["layers"]
    static_plans = piece_plans(walks["spatial"], 2, {}, "static")
    assert [p.kind for p in static_plans] == ["layers"] + ["static"] * 8 + ["layers"]


def test_piece_timer_partitions_each_forward_pass():
    model = laudnet.convert(torchvision.models.resnet18(), paradigm="spatial").eval()
    laudnet.set_execution(model, "sparse")
    set_decisions(model, 0.5)
    walk = walk_network(model, 64)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    hooks = len(model._forward_pre_hooks), len(model._forward_hooks)
    with torch.no_grad(), piece_timer(model, walk) as times:
        for _ in range(2):
            start = time.perf_counter()
            model(x)
            wall = time.perf_counter() - start
            assert len(times) == len(walk.pieces()) and all(t > 0 for t in times)
            assert sum(times) <= wall
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == hooks  # removed
    with pytest.raises(RuntimeError, match="saw 3 marks for 8 blocks; expected 18"):
        _durations(walk.pieces(), [0.0, 1.0, 2.0])


def test_measure_pieces_gives_one_sample_per_piece_at_the_realized_rates():
    config = NetworkConfig("resnet18", 64, 2, "layer+spatial", 2, 0.5)
    samples = measure_pieces(config, repeats=2, seed=3)
    sparse = [s for s in samples if s.meta["kind"] in ("packed layers", "layer+spatial")]
    static = [s for s in samples if s.meta["kind"] in ("layers", "static")]
    assert len(sparse) == len(static) == 10 and len(samples) == 20
    assert all(s.family == "piece" and s.ms > 0 and s.ops and s.meta["block_type"] == "basic" for s in samples)
    rates = [s.meta["rate"] for s in sparse if s.meta["dynamic"]]
    assert len(set(np.round(rates, 6))) > 1  # every block its own rate
    again = Sample.from_dict(samples[1].to_dict())
    assert again.meta == samples[1].meta and again.ops == samples[1].ops


def test_calibration_networks_are_seeded_and_cover_other_sizes():
    configs = calibration_networks(6, seed=0)
    assert configs == calibration_networks(6, seed=0)
    balanced = calibration_networks(105, seed=1)  # architectures, paradigms, batches and sizes in turn
    assert {c.input_size for c in balanced} - {128, 160, 192, 224}  # sizes the validation never uses
    assert [c.arch for c in balanced[:14]] == list(NETWORK_ARCHS) * 2
    assert [c.batch for c in balanced[:6]] == list(NETWORK_BATCHES) * 2
    assert [c.input_size for c in balanced[:10]] == list(CALIBRATION_SIZES) * 2
    triples = {(c.arch, c.paradigm, c.batch) for c in balanced}  # every one once
    assert len(triples) == len(NETWORK_ARCHS) * len(NETWORK_PARADIGMS) * len(NETWORK_BATCHES)
    sizes = {(c.arch, c.batch, c.input_size) for c in balanced}  # every architecture at every batch and size
    assert len(sizes) == len(NETWORK_ARCHS) * len(NETWORK_BATCHES) * len(CALIBRATION_SIZES)
    longer = calibration_networks(140, seed=1)
    assert longer[:105] == balanced
    assert len({(c.arch, c.paradigm, c.batch, c.input_size) for c in longer}) == 140  # the second round differs


def test_set_decisions_takes_one_rate_per_block():
    model = laudnet.create_model("resnet18", paradigm="channel").eval()
    names = [name for name, _ in dynamic_blocks(model)]
    rates = {name: 0.25 if i % 2 else 1.0 for i, name in enumerate(names)}
    set_decisions(model, rates)
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    realized = stats(model).mean_rates
    assert [round(realized[n], 2) for n in names] == [0.25 if i % 2 else 1.0 for i in range(len(names))]
    with pytest.raises(ValueError, match="unknown \\[\\], missing \\['layer1.0'\\]"):
        set_decisions(model, {n: 0.5 for n in names[1:]})


def test_learned_correction_recovers_the_factor_of_each_kind():
    hw = _synthetic_profile()
    assert LearnedCorrection.available(hw) and not LearnedCorrection.available(load_hardware("x86_avx2"))
    for name, walk in _walks(112).items():  # a size no calibration network had
        rates = {s.name: 0.4 for s in walk.blocks}
        learned = predict_walk(walk, hw, 3, rates)
        analytic = predict_walk(walk, hw, 3, rates, method="analytic")
        assert learned.method == "learned" and analytic.method == "analytic"
        for plan in piece_plans(walk, 3, rates, "sparse"):
            ratio = (sum(learned.blocks[i].total_ms for i in plan.indices)
                     / sum(analytic.blocks[i].total_ms for i in plan.indices))
            assert ratio == pytest.approx(FACTORS[plan.kind], rel=0.1), (name, plan.kind)
        again = predict_walk(walk, hw, 3, rates)
        assert again.total_ms == learned.total_ms
    held_out = held_out_predictions([Sample.from_dict(s) for s in hw.samples], hw, folds=3)
    errors = [p / s.ms - 1 for s, p in held_out]
    assert len(errors) == len(hw.samples) and np.median(np.abs(errors)) < 0.05


def test_block_type_of_networks_blocks_and_walks():
    for arch, expected in (("resnet18", "basic"), ("resnet50", "bottleneck"), ("regnet_y_400mf", "regnet"),
                           ("mobilenet_v2", "inverted residual")):
        static, dynamic = torchvision.models.get_model(arch), laudnet.create_model(arch, paradigm="spatial")
        assert block_type(static) == block_type(dynamic) == expected
        assert block_type(next(b for _, b in dynamic_blocks(dynamic))) == expected
    assert block_type(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())) is None
    assert {walk.block_type for walk in _walks(64).values()} == {"basic"}
    with pytest.raises(ValueError, match="block type 'vgg' is unknown; allowed: basic, bottleneck"):
        predict_walk(dataclasses.replace(_walks(64)["static"], block_type="vgg"), _synthetic_profile(), 1)


def test_learned_correction_tells_block_types_apart():
    """The same pieces measured inside networks of two block types at two factors: only the
    block type tells them apart, and the correction learns both."""
    hw = load_hardware("x86_avx2")
    rng = random.Random(0)
    factors = {"basic": 0.7, "regnet": 1.4}
    samples = []
    for n in range(8):
        size, batch = rng.choice([64, 96, 128]), rng.choice([1, 2, 4])
        for kind, factor in factors.items():
            for plan in piece_plans(_walks(size)["static"], batch, {}, "sparse"):
                ms = sum(c.total_ms for c in plan.segment_costs(hw)) * factor
                samples.append(Sample("piece", plan.ops, ms, dict(kind=plan.kind, batch=batch, rate=plan.rate,
                                                                   dynamic=plan.dynamic, fused=plan.fused,
                                                                   network=f"{kind}-{n}", block_type=kind)))
    hw = dataclasses.replace(hw, name="typed", samples=tuple(s.to_dict() for s in samples))
    walk = _walks(112)["static"]
    analytic = predict_walk(walk, hw, 2, method="analytic").total_ms
    for kind, factor in factors.items():
        learned = predict_walk(dataclasses.replace(walk, block_type=kind), hw, 2).total_ms
        assert learned / analytic == pytest.approx(factor, rel=0.1), kind


def test_correction_divides_out_the_moment_a_network_was_measured():
    """Ten static networks measured at their analytic time, but the tenth, and the sparse
    network measured with it, 1.5x slower (a slow moment of the machine): the sparse pieces,
    seen in that network only, are priced at their analytic time, not at the moment's."""
    hw = load_hardware("x86_avx2")
    walks = _walks(96)
    rates = {block.name: 0.5 for block in walks["spatial"].blocks}
    samples = []
    for n in range(10):
        measured = [("static", walks["static"], 1.0 if n < 9 else 1.5)]
        if n == 9:
            measured.append(("sparse", walks["spatial"], 1.5))
        for model, walk, slower in measured:
            for plan in piece_plans(walk, 2, rates if model == "sparse" else {}, "sparse"):
                ms = sum(c.total_ms for c in plan.segment_costs(hw)) * slower
                samples.append(Sample("piece", plan.ops, ms, dict(kind=plan.kind, batch=2, rate=plan.rate,
                                                                   dynamic=plan.dynamic, fused=plan.fused,
                                                                   network=f"net-{n}", model=model)))
    hw = dataclasses.replace(hw, name="moments", samples=tuple(s.to_dict() for s in samples))
    analytic = predict_walk(walks["spatial"], hw, 2, rates, method="analytic").total_ms
    assert predict_walk(walks["spatial"], hw, 2, rates).total_ms / analytic == pytest.approx(1.0, rel=0.1)
    moods = network_moods(samples, np.array([s.ms for s in samples]) / 1.5)
    assert np.allclose(moods, math.log(1.5))  # every network 1.5x slower than that prediction


def test_block_prices_use_the_correction_and_the_drift_factor():
    hw = _synthetic_profile()
    block = laudnet.create_model("resnet18", paradigm="spatial").layer2[1]
    analytic, ops = price_block(block, (128, 16, 16), hw, 2, 0.5, method="analytic")
    learned, same = price_block(block, (128, 16, 16), hw, 2, 0.5)
    assert same == ops and learned.total_ms / analytic.total_ms == pytest.approx(1.6, rel=0.1)
    slower, _ = price_block(block, (128, 16, 16), hw.scaled(1.5), 2, 0.5)
    assert slower.total_ms == pytest.approx(1.5 * learned.total_ms)


def test_learned_correction_from_a_saved_profile_and_the_command_line(tmp_path, capsys):
    hw = _synthetic_profile()
    path = tmp_path / "mine.json"
    save_hardware(dict(hw.to_dict(), samples=list(hw.samples)), path)
    loaded = load_hardware(str(path))
    assert LearnedCorrection.available(loaded)
    assert main(["predict", "--arch", "resnet18", "--paradigm", "spatial", "--rate", "0.5", "--hardware",
                 str(path), "--batch-size", "2", "--input-size", "96"]) == 0
    assert "learned model" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["predict", "--arch", "resnet18", "--hardware", "x86_avx2", "--method", "exact"])
    assert main(["predict", "--arch", "resnet18", "--hardware", "x86_avx2", "--method", "learned"]) != 0
    assert "needs at least 20 measured network pieces" in capsys.readouterr().err


def test_calibration_writes_a_profile_with_network_pieces(tmp_path, monkeypatch):
    tiny = [NetworkConfig("resnet18", 64, 1, "spatial", None, 0.5)]
    monkeypatch.setattr(pieces, "calibration_networks", lambda n, seed: tiny[:n])
    hw, report = calibrate(tmp_path / "mine.json", threads=1, scale=0.01, repeats=1, progress=False, networks=1)
    loaded = load_hardware(str(tmp_path / "mine.json"))
    kinds = sorted({s["meta"]["kind"] for s in loaded.samples if s["family"] == "piece"})
    assert kinds == ["layers", "packed layers", "spatial", "static"]
    assert report["piece"]["n"] == 20 and "network, learned" not in report  # 10 sparse, 10 static
    assert "20 pieces of 1 network;" in loaded.sources[0]
    assert len(loaded.reference_ms) == 2 and min(loaded.reference_ms) > 0  # after the network and at the end
    assert LearnedCorrection.available(loaded)
    with pytest.raises(ValueError, match="number of calibration networks must be 0 or more, got -1"):
        calibrate(tmp_path / "other.json", networks=-1)


def test_an_extended_calibration_adds_the_next_networks_and_keeps_the_fit(tmp_path, monkeypatch, capsys):
    tiny = [NetworkConfig("resnet18", 64, 1, "spatial", None, 0.5), NetworkConfig("resnet18", 64, 2, "layer", None, 0.5)]
    drawn = []
    monkeypatch.setattr(pieces, "calibration_networks", lambda n, seed: drawn.append(n) or tiny[:n])
    calibrate(tmp_path / "mine.json", threads=1, scale=0.01, repeats=1, progress=False, networks=1)
    first = load_hardware(str(tmp_path / "mine.json"))
    assert main(["latency", "calibrate", "--extend", str(tmp_path / "mine.json"), "--networks", "1",
                 "--out", str(tmp_path / "more.json")]) == 0
    more = load_hardware(str(tmp_path / "more.json"))
    assert drawn == [1, 2]  # the second network of the same draw, not the first again
    assert more.samples[:len(first.samples)] == first.samples and more.model == first.model
    networks = [s["meta"]["network"] for s in more.samples[len(first.samples):]]
    assert set(networks) == {tiny[1].label} and len(more.reference_ms) == len(first.reference_ms) + 2
    assert more.sources[0] == first.sources[0] and "of 1 more network, 2 in all" in more.sources[-1]
    assert "wrote profile 'more'" in capsys.readouterr().out
    with pytest.raises(ValueError, match="calibrated with 1 threads, got threads=2"):
        extend_calibration(tmp_path / "mine.json", threads=2)
    with pytest.raises(ValueError, match="holds no calibration of this machine"):
        extend_calibration("x86_avx2")
    save_hardware({**json.loads((tmp_path / "mine.json").read_text()), "title": "another CPU, 1 thread"},
                  tmp_path / "other.json")
    assert main(["latency", "calibrate", "--extend", str(tmp_path / "other.json")]) != 0
    assert "was calibrated on 'another CPU, 1 thread'; this machine is" in capsys.readouterr().err
    assert main(["latency", "calibrate", "--extend", str(tmp_path / "mine.json"), "--repeats", "3"]) != 0
    assert "--repeats set the micro-benchmarks, which --extend keeps from the profile" in capsys.readouterr().err


def test_network_validation_reports_the_learned_and_the_analytic_predictions(tmp_path):
    result = validate_networks(1, seed=3, hardware=_synthetic_profile(), repeats=2, archs=("resnet18",),
                               input_sizes=(64,), progress=False)
    assert set(result.metrics) == {f"{q}, {m}" for q in ("sparse latency", "static latency", "speedup")
                                   for m in ("learned", "analytic only")}
    row = result.rows[0]
    assert row["predicted_static_ms"] / row["analytic_static_ms"] == pytest.approx(
        FACTORS["static"], rel=0.15)  # mostly residual blocks, priced 0.7 times the analytic model
    paths = result.write(tmp_path)
    assert paths["png"].stat().st_size > 0 and "analytic only" in paths["md"].read_text()
    stored = json.loads(paths["json"].read_text())["rows"][0]  # predicted again from what was stored
    again = predict_network(NetworkConfig.from_row(stored), _synthetic_profile(), stored["realized_rates"])
    assert again["sparse_ms"] == pytest.approx(row["predicted_sparse_ms"]) and len(stored["realized_rates"]) == 8


def test_network_validation_also_reports_the_predictions_not_rescaled_for_drift(monkeypatch):
    monkeypatch.setattr(validate_networks_module, "rescale_for_drift", lambda hw: (hw.scaled(2.0), "2.00x slower"))
    result = validate_networks(1, seed=3, hardware=_synthetic_profile(), repeats=2, archs=("resnet18",),
                               input_sizes=(64,), progress=False)
    row = result.rows[0]
    assert row["predicted_sparse_ms"] == pytest.approx(2 * row["unscaled_sparse_ms"])
    assert row["predicted_speedup"] == pytest.approx(row["unscaled_speedup"])
    assert {"sparse latency, learned, not rescaled", "static latency, learned, not rescaled"} < set(result.metrics)
    assert "speedup, learned, not rescaled" not in result.metrics and result.drift == "2.00x slower"
