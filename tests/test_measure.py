import pytest

from laudnet.measure import interleaved, ratio


def test_interleaved_runs_every_candidate_each_round_and_reports_ratios():
    calls = []
    timings = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=5, warmup=1)
    assert calls.count("a") == calls.count("b") == 6
    assert len(timings["a"].times) == 5
    r = ratio(timings, "a", "b")
    assert len(r.values) == 5 and r.spread[0] <= r.median <= r.spread[1]
    with pytest.raises(ValueError, match="repeats"):
        interleaved({"a": lambda: None}, repeats=0)
