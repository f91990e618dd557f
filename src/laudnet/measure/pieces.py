"""Calibration on whole networks: time the pieces that really execute.

A block timed alone is not the block inside a network (there its input is in the caches,
its weights are not, and the Python code between blocks runs too), so calibration also
measures networks as they run: ``calibration_networks`` draws networks of every supported
architecture, input size, batch, paradigm and granularity with a **different random rate
for every block** (the validation networks of ``laudnet latency validate --networks`` have
one rate for all, so none of them is ever measured here), converts each from torchvision
(same weights), and times, in forward passes of the sparse network and of the static
torchvision network interleaved, every piece of each (:meth:`NetworkWalk.pieces`): hooks
on the network and on each block mark when it starts and ends, so the pieces' times add up
to the whole forward pass. Each piece becomes a :class:`~laudnet.latency.samples.Sample`
with its plan, kind, batch and realized rate: what the learned correction
(:mod:`laudnet.latency.learned`) is trained on.
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..dynamic import dynamic_blocks, set_decisions, stats
from ..latency.predictor import NetworkWalk, piece_plans, walk_network
from ..latency.samples import Sample
from .validate_networks import NETWORK_ARCHS, NetworkConfig, build_networks, sample_networks

CALIBRATION_SIZES = (96, 128, 160, 192, 224)
"""Five sizes: with the balanced draw, every architecture at every batch meets each of them."""
RATE_RANGE = (0.05, 1.0)
"""Each block of a calibration network gets its own rate, uniform in this range."""


@contextmanager
def piece_timer(model: nn.Module, walk: NetworkWalk) -> Iterator[list[float]]:
    """While open, every forward pass of ``model`` appends the seconds each piece of
    ``walk`` took to the yielded list (cleared at the start of each pass). Hooks on the
    network and on the anchor of each piece mark the boundaries: a block ends a piece, a
    run of static layers ends where the next block starts."""
    pieces = walk.pieces()
    modules = dict(model.named_modules())
    marks: list[float] = []
    times: list[float] = []

    def mark(*_) -> None:
        marks.append(time.perf_counter())

    def start(*_) -> None:
        marks.clear()
        mark()

    def finish(*_) -> None:
        mark()
        times.clear()
        times.extend(_durations(pieces, marks))

    hooks = [model.register_forward_pre_hook(start, prepend=True)]
    for piece in pieces:
        if piece.anchor:
            module = modules[walk.segments[piece.indices[0]].name]
            hooks += [module.register_forward_pre_hook(mark), module.register_forward_hook(mark)]
    hooks.append(model.register_forward_hook(finish))
    try:
        yield times
    finally:
        for hook in hooks:
            hook.remove()


def _durations(pieces, marks: list[float]) -> list[float]:
    """Per piece, seconds between its start and end marks (``marks``: the pass's start, the
    start and end of every anchor, the pass's end)."""
    anchors = sum(p.anchor for p in pieces)
    if len(marks) != 2 * anchors + 2:
        raise RuntimeError(f"piece timing saw {len(marks)} marks for {anchors} blocks; expected {2 * anchors + 2} "
                           "(a block's forward ran more than once or not at all)")
    out, last, position = [], marks[0], 1
    for index, piece in enumerate(pieces):
        if piece.anchor:
            end = marks[position + 1]
            position += 2
        else:
            end = marks[position] if index + 1 < len(pieces) else marks[-1]
        out.append(end - last)
        last = end
    return out


def calibration_networks(n: int, seed: int = 0) -> list[NetworkConfig]:
    """``n`` networks to calibrate on, drawn with a seeded generator like the validation
    networks but over more input sizes, every architecture, paradigm, batch and input size
    in turn (drawn at random, 40 networks had left RegNetY-800MF with 2, and channel-skipping
    bottlenecks without batch 4, and those were mispredicted); their ``rate`` is unused
    (each block draws its own, :func:`measure_pieces`)."""
    return sample_networks(n, seed + 7919, NETWORK_ARCHS, CALIBRATION_SIZES, balanced=True)


def _piece_samples(walk: NetworkWalk, batch: int, rates: dict[str, float], seconds: list[list[float]],
                   label: str, model: str) -> list[Sample]:
    """One sample per piece of ``walk`` (sparse execution) with its median time over the
    rounds' ``seconds``."""
    plans = piece_plans(walk, batch, rates, "sparse")
    samples = []
    for index, plan in enumerate(plans):
        ms = statistics.median(round_[index] for round_ in seconds) * 1e3
        meta = dict(kind=plan.kind, batch=batch, rate=plan.rate, dynamic=plan.dynamic, fused=plan.fused,
                    network=label, model=model, piece=walk.segments[plan.indices[0]].name,
                    block_type=walk.block_type)
        samples.append(Sample("piece", plan.ops, ms, meta))
    return samples


@torch.no_grad()
def measure_pieces(config: NetworkConfig, repeats: int = 5, seed: int = 0) -> list[Sample]:
    """The pieces of the sparse network of ``config`` (every block at its own random rate)
    and of its static torchvision network, timed in ``repeats`` interleaved rounds after a
    warm-up (median per piece); the sparse pieces are planned at the rates the blocks realized."""
    static, dynamic = build_networks(config, seed=seed)
    rng = np.random.default_rng(seed)
    set_decisions(dynamic, {name: float(rng.uniform(*RATE_RANGE)) for name, _ in dynamic_blocks(dynamic)}, seed)
    x = torch.randn(config.batch, 3, config.input_size, config.input_size).contiguous(
        memory_format=torch.channels_last)
    walks = {"sparse": walk_network(dynamic, config.input_size), "static": walk_network(static, config.input_size)}
    models = {"sparse": dynamic, "static": static}
    for name in models:
        models[name](x)  # warm-up: kernel choices, packing
    rounds = timed_pieces(models, walks, [x], repeats, seed)
    realized = stats(dynamic).mean_rates
    return [sample for name in models
            for sample in _piece_samples(walks[name], config.batch, realized if name == "sparse" else {},
                                         rounds[name], config.label, name)]


@torch.no_grad()
def timed_pieces(models: dict[str, nn.Module], walks: dict[str, NetworkWalk], inputs: list[torch.Tensor],
                 repeats: int, seed: int = 0, gap_s: float = 0.0) -> dict[str, list[list[float]]]:
    """Per model, the seconds of each piece of its walk (:func:`piece_timer`) for every
    input in ``repeats`` rounds, the models interleaved in a shuffled order on each input
    (``gap_s`` idle before each call), after one round that warms up and is dropped."""
    rounds: dict[str, list[list[float]]] = {name: [] for name in models}
    order = list(models)
    shuffler = random.Random(seed)
    for round_ in range(repeats + 1):
        for x in inputs:
            shuffler.shuffle(order)
            for name in order:
                if gap_s:
                    time.sleep(gap_s)
                with piece_timer(models[name], walks[name]) as times:
                    models[name](x)
                if round_:
                    rounds[name].append(list(times))
    return rounds


def measure_networks(n: int, repeats: int = 5, seed: int = 0, progress: bool = True,
                     time_limit_s: float | None = None,
                     after_each: Callable[[], object] | None = None, start: int = 0) -> list[Sample]:
    """The pieces of ``n`` calibration networks (:func:`calibration_networks`) from the
    ``start``-th on (an extended calibration goes on where the first stopped), or of as
    many as ``time_limit_s`` seconds allow (the first network's kernel choices on a new
    machine take longest; they are cached, :mod:`laudnet.sparse.tuning`); ``after_each``
    is called after every network (calibration reads the drift reference there)."""
    samples: list[Sample] = []
    started = time.perf_counter()
    configs = calibration_networks(start + n, seed)[start:]
    with tqdm(configs, desc="calibrating on networks", disable=not progress, unit="network") as bar:
        for index, config in enumerate(bar):
            if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                bar.write(f"calibration on networks stopped after {index} of {len(configs)} networks: "
                          f"time limit of {time_limit_s:.0f} s reached")
                break
            samples += measure_pieces(config, repeats, seed * 1000 + start + index)
            if after_each is not None:
                after_each()
    return samples


__all__ = ["CALIBRATION_SIZES", "calibration_networks", "measure_networks", "measure_pieces", "piece_timer"]
