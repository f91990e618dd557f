import pytest

import laudnet
from laudnet.measure import interleaved, ratio
from laudnet.measure.validate_networks import build_networks, sample_networks, validate_networks


def test_interleaved_runs_every_candidate_each_round_and_reports_ratios():
    calls = []
    timings = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=5, warmup=1)
    assert calls.count("a") == calls.count("b") == 6
    assert len(timings["a"].times) == 5
    r = ratio(timings, "a", "b")
    assert len(r.values) == 5 and r.spread[0] <= r.median <= r.spread[1]
    with pytest.raises(ValueError, match="repeats"):
        interleaved({"a": lambda: None}, repeats=0)


def test_whole_network_validation_samples_valid_networks_and_reports_speedups(tmp_path):
    configs = sample_networks(8, seed=2)
    assert configs == sample_networks(8, seed=2) and len(set(configs)) == 8
    # the held-out networks stay those of the README's tables from one version to the next
    assert [c.label for c in sample_networks(2, seed=1)] == ["resnet101 224px b=4 layer r=0.25",
                                                            "regnet_y_800mf 224px b=1 spatial:1 r=0.75"]
    for config in configs[:3]:
        static, dynamic = build_networks(config, meta=True)
        assert len(laudnet.dynamic.dynamic_blocks(dynamic)) > 0
    result = validate_networks(1, seed=3, hardware="x86_avx2", repeats=2, archs=("resnet18",), input_sizes=(64,),
                               progress=False, remeasure=True)
    row = result.rows[0]
    assert row["measured_sparse_ms"] > 0 and row["predicted_static_ms"] > 0
    assert row["predicted_speedup"] == pytest.approx(row["predicted_static_ms"] / row["predicted_sparse_ms"])
    assert set(result.metrics) == {f"{q}, {m}" for q in ("sparse latency", "static latency", "speedup")
                                   for m in ("analytic", "measured again")}
    assert row["remeasured_sparse_ms"] > 0 and row["remeasured_speedup"] > 0
    paths = result.write(tmp_path)
    assert "| resnet18 64px" in paths["md"].read_text() and paths["png"].stat().st_size > 0
    assert "measured interleaved, 2 rounds" in paths["md"].read_text()
