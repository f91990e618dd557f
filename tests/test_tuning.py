"""Kernel choice by measurement: cached per machine, reused, overridable."""

import json

import pytest
import torch
from torch import nn

from laudnet.sparse import tuning
from laudnet.sparse.packed import PackedConv, onednn_available

from conftest import randomize_norms


def test_choice_is_measured_once_saved_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("LAUDNET_CACHE_DIR", str(tmp_path))
    tuning.clear_choices()
    calls = {"a": 0, "b": 0}

    def candidate(name):
        def run():
            calls[name] += 1
        return run

    chosen = tuning.choose("op:test", {"a": candidate("a"), "b": candidate("b")})
    assert chosen in ("a", "b") and calls["a"] == calls["b"] == 1 + tuning.ROUNDS
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved[tuning.machine_key()]["op:test"] == chosen

    def never():
        raise AssertionError("a cached choice is not measured again")

    tuning.clear_choices()  # a new process: the choice comes from the file
    monkeypatch.setattr(tuning, "_choices", None)
    assert tuning.choose("op:test", {"a": never, "b": never}) == chosen
    tuning.clear_choices()


def test_forced_backend_bypasses_measurement_and_unknown_is_refused():
    def never():
        raise AssertionError("not measured when forced")

    with tuning.forced_backend("aten"):
        assert tuning.choose("op:forced", {"aten": never, "onednn": never}) == "aten"
    with pytest.raises(ValueError, match="'mkl' is unknown; allowed: aten, onednn"):
        tuning.force_backend("mkl")


def test_unwritable_cache_is_not_an_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LAUDNET_CACHE_DIR", str(blocker / "sub"))
    tuning.clear_choices()
    assert tuning.choose("op:unwritable", {"a": lambda: None, "b": lambda: None}) in ("a", "b")
    tuning.clear_choices()


@pytest.mark.parametrize("backend", tuning.BACKENDS)
@pytest.mark.parametrize("groups, stride, act", [(1, 1, "relu"), (1, 2, None), (4, 1, "relu6"), (8, 2, "relu")])
def test_every_backend_computes_the_folded_unit(backend, groups, stride, act):
    if backend == "onednn" and not onednn_available(torch.zeros(1)):
        pytest.skip("oneDNN unavailable")
    conv = nn.Conv2d(8, 8, 3, stride, 1, groups=groups, bias=groups == 4)
    norm = randomize_norms(nn.BatchNorm2d(8)).eval()
    activation = {"relu": torch.nn.functional.relu, "relu6": torch.nn.functional.relu6, None: None}[act]
    x = torch.randn(2, 8, 9, 7).contiguous(memory_format=torch.channels_last)
    expected = norm(conv(x))
    residual = torch.randn_like(expected).contiguous(memory_format=torch.channels_last)
    packed = PackedConv(conv, norm)
    with torch.no_grad(), tuning.forced_backend(backend):
        plain = packed.map(x, activation)
        added = packed.map(x, activation, residual)
    reference = expected if activation is None else activation(expected)
    with_residual = expected + residual if activation is None else activation(expected + residual)
    torch.testing.assert_close(plain, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(added, with_residual, rtol=1e-4, atol=1e-4)
    assert plain.is_contiguous(memory_format=torch.channels_last)


def test_packed_weights_serve_only_the_shape_they_were_packed_for():
    """oneDNN picks a weight layout by the input shape; a weight packed for one row count
    and run on another can take a reference kernel 30-100x slower."""
    if not onednn_available(torch.zeros(1)):
        pytest.skip("oneDNN unavailable")
    conv = nn.Conv2d(32, 16, 1, bias=False)
    packed = PackedConv(conv, randomize_norms(nn.BatchNorm2d(16)).eval())
    with torch.no_grad(), tuning.forced_backend("onednn"):
        for m in (7, 16, 31):  # gathered rows: a different count every call, never packed
            a = torch.randn(m, 32)
            torch.testing.assert_close(packed.gemm(a), packed._gemm_aten(a, None, None), rtol=1e-4, atol=1e-4)
        assert packed._onednn_packed == {}
        for m in (49, 98):  # whole maps: packed once per row count
            packed.gemm(torch.randn(m, 32), fixed_rows=True)
            packed.gemm(torch.randn(m, 32), fixed_rows=True)
    assert sorted(key[1] for key in packed._onednn_packed) == [49, 98]


def test_machine_key_names_the_cpu_and_changes_with_the_threads():
    from laudnet.machine import cpu_field, cpu_name

    key = tuning.machine_key()
    assert cpu_name() in key and (cpu_field("model name") or "") in cpu_name()
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert tuning.machine_key() != key  # choices measured on other thread counts are not reused
    finally:
        torch.set_num_threads(threads)


def test_a_choice_is_not_reused_at_another_thread_count(monkeypatch, tmp_path):
    monkeypatch.setenv("LAUDNET_CACHE_DIR", str(tmp_path))
    tuning.clear_choices()
    calls = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    tuning.choose("op:threads", candidates)
    measured = len(calls)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        tuning.choose("op:threads", candidates)
        assert len(calls) == 2 * measured  # measured again for this thread count
    finally:
        torch.set_num_threads(threads)
    tuning.choose("op:threads", candidates)
    assert len(calls) == 2 * measured  # the first thread count's choice is still known
    tuning.clear_choices()
