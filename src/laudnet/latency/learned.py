"""The learned correction of a calibrated CPU profile (nn-Meter's idea: predict the units
that really execute, not single operators).

The operators of a block priced one by one do not add up to the block: the engine runs
them fused, chooses kernels by measurement, and a block inside a network finds its input
in the caches and its weights out of them. Calibration therefore also times the *pieces*
of whole networks as they run (:mod:`laudnet.measure.pieces`): every dynamic block, every
residual block of a static network, and every run of static layers between them. A
gradient-boosted regressor maps the features of a piece (its kind, the residual block its
network is built of, batch and activation rate, its analytic cost and how it splits into
compute, memory and overhead, its MACs, depthwise and grouped shares, bytes moved and map
size) to the logarithm of measured over analytic time; a prediction is the analytic cost
times that factor. Training is seeded, so predictions are deterministic.

A shared machine runs a whole network slower or faster for the seconds it is measured, and
each kind of sparse block appears in only a few calibration networks, so the correction
would learn those moments as properties of the block. Each network's static torchvision
pieces, timed interleaved with its sparse ones, show its moment: the correction is fitted,
every network's pieces are divided by how much slower its static pieces ran than that fit
predicts (:func:`network_moods`), and it is fitted again.
"""

from __future__ import annotations

import math

import numpy as np

from ..sparse.plan import Op
from .cost import Cost, block_overhead_ms, is_depthwise, plan_cost
from .hardware import Hardware
from .samples import Sample

KINDS = ("layers", "packed layers", "static", "spatial", "channel", "layer", "layer+spatial", "layer+channel")
"""Kinds of pieces: static layers run eagerly or packed by the sparse engine, a residual block
without gates, and a dynamic block of each paradigm."""

BLOCK_TYPES = ("basic", "bottleneck", "regnet", "inverted residual")
"""The residual block a network is built of (ResNet-18/34, ResNet-50+, RegNet-Y with
squeeze-excitation, MobileNetV2): every piece of a network carries it, since pieces of the
same operators run differently inside networks of different blocks (measured: RegNet-Y's
sparse blocks run slower than ResNet pieces of the same cost)."""

MIN_SAMPLES = 20
_CACHE: dict[tuple, "LearnedCorrection"] = {}


def piece_features(ops: list[Op], cost: Cost, kind: str, batch: int, rate: float,
                   block_type: str | None) -> list[float]:
    """What the regressor sees of one piece: ``ops`` its plan at ``batch``, ``cost`` their
    analytic cost (without drift scaling), ``rate`` the block's activation rate (1 for
    static pieces), ``block_type`` the residual block of its network (one of
    :data:`BLOCK_TYPES`, ``None`` for another or unknown)."""
    if kind not in KINDS:
        raise ValueError(f"piece kind {kind!r} is unknown; allowed: {', '.join(KINDS)}")
    if block_type is not None and block_type not in BLOCK_TYPES:
        raise ValueError(f"block type {block_type!r} is unknown; allowed: {', '.join(BLOCK_TYPES)} or None")
    log = lambda v: math.log(max(float(v), 1e-6))  # noqa: E731
    matmuls = [o for o in ops if o.kind in ("gemm", "conv")]
    macs = sum(o.macs * o.count for o in matmuls)
    depthwise = sum(o.macs * o.count for o in matmuls if is_depthwise(o))
    grouped = sum(o.macs * o.count for o in matmuls if o.kind == "conv" and o.shape[5] > 1) - depthwise
    moved = sum(o.bytes * o.count for o in ops if o.kind not in ("gemm", "conv"))
    gathered = sum(o.bytes * o.count for o in ops if o.kind == "gather")
    convs = [o for o in ops if o.kind == "conv"]
    pixels = max((o.shape[6] * o.shape[7] for o in convs), default=1)
    channels = max((o.shape[2] for o in convs), default=1)
    total = max(cost.total_ms, 1e-9)
    return ([float(kind == k) for k in KINDS] + [float(block_type == t) for t in BLOCK_TYPES]
            + [log(batch), float(rate), log(total), cost.compute_ms / total, cost.memory_ms / total,
               cost.overhead_ms / total, log(macs + 1), depthwise / max(macs, 1), grouped / max(macs, 1),
               log(moved + 1), log(gathered + 1), sum(o.count for o in ops if o.kind == "index"), float(len(ops)),
               log(pixels), log(channels)])


def analytic_cost(sample: Sample, hw: Hardware) -> Cost:
    """The analytic cost of a measured piece (its plan operators and, for a dynamic block,
    the block's fixed host-side cost) on ``hw`` without drift scaling."""
    overhead = block_overhead_ms(hw, sample.meta["kind"]) if sample.meta.get("dynamic") else 0.0
    return plan_cost(sample.ops, hw, sample.meta.get("fused")) + Cost(overhead_ms=overhead)


def sample_features(sample: Sample, hw: Hardware) -> tuple[list[float], Cost]:
    """:func:`piece_features` of a measured piece on ``hw``, and its analytic cost."""
    cost = analytic_cost(sample, hw)
    meta = sample.meta
    return piece_features(sample.ops, cost, meta["kind"], meta["batch"], meta["rate"], meta.get("block_type")), cost


def network_moods(pieces: list[Sample], predicted_ms: np.ndarray) -> np.ndarray:
    """Per piece, the log of how much slower the static pieces of its network ran than
    ``predicted_ms`` (one value per piece) says: the machine's moment when that network was
    measured. 0 for a network without static pieces."""
    totals: dict[str, list[float]] = {}
    for s, predicted in zip(pieces, predicted_ms):
        if s.meta.get("model") == "static":
            measured_and_predicted = totals.setdefault(s.meta.get("network"), [0.0, 0.0])
            measured_and_predicted[0] += s.ms
            measured_and_predicted[1] += float(predicted)
    moods = {network: math.log(measured / predicted) for network, (measured, predicted) in totals.items()}
    return np.array([moods.get(s.meta.get("network"), 0.0) for s in pieces])


class LearnedCorrection:
    """Gradient-boosted regressor of ``log(measured / analytic)`` over measured pieces, with
    each calibration network's moment divided out (:func:`network_moods`)."""

    def __init__(self, samples: list[Sample], hw: Hardware, seed: int = 0) -> None:
        from sklearn.base import clone
        from sklearn.ensemble import HistGradientBoostingRegressor

        pieces = [s for s in samples if s.family == "piece"]
        if len(pieces) < MIN_SAMPLES:
            raise ValueError(f"the learned correction needs at least {MIN_SAMPLES} measured network pieces, "
                             f"profile {hw.name!r} has {len(pieces)}; run `laudnet latency calibrate`")
        features = [sample_features(s, hw) for s in pieces]
        rows = np.array([row for row, _ in features])
        analytic = np.array([max(cost.total_ms, 1e-9) for _, cost in features])
        measured = np.array([s.ms for s in pieces])
        targets, weights = np.log(measured / analytic), np.sqrt(measured)
        regressor = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                                  min_samples_leaf=5, early_stopping=False, random_state=seed)
        first = clone(regressor).fit(rows, targets, sample_weight=weights)
        moods = network_moods(pieces, analytic * np.exp(first.predict(rows)))
        self.model = regressor.fit(rows, targets - moods, sample_weight=weights)

    @classmethod
    def for_hardware(cls, hw: Hardware) -> "LearnedCorrection":
        """The correction trained on ``hw``'s measured pieces (cached per profile)."""
        key = (hw.name, str(hw.path), len(hw.samples), tuple(s["ms"] for s in hw.samples[-50:]))
        if key not in _CACHE:
            _CACHE[key] = cls([Sample.from_dict(s) for s in hw.samples], hw)
        return _CACHE[key]

    @staticmethod
    def available(hw: Hardware) -> bool:
        """Whether ``hw`` holds enough measured pieces to train the correction."""
        return sum(s.get("family") == "piece" for s in hw.samples) >= MIN_SAMPLES

    def factors(self, rows: list[list[float]]) -> list[float]:
        """Measured-over-analytic factors of pieces described by :func:`piece_features`."""
        if not rows:
            return []
        return [float(v) for v in np.exp(self.model.predict(np.array(rows)))]


def held_out_predictions(samples: list[Sample], hw: Hardware, folds: int = 5) -> list[tuple[Sample, float]]:
    """Each measured piece with its prediction by a correction trained on other networks
    only: the measured networks split into ``folds`` groups, each predicted by a correction
    trained on the others (groups too small to leave the rest trainable are skipped)."""
    pieces = [s for s in samples if s.family == "piece"]
    networks = sorted({s.meta["network"] for s in pieces})
    out = []
    for fold in range(min(folds, len(networks))):
        held = set(networks[fold::folds])
        train = [s for s in pieces if s.meta["network"] not in held]
        if len(train) < MIN_SAMPLES:
            continue
        correction = LearnedCorrection(train, hw)
        test = [s for s in pieces if s.meta["network"] in held]
        rows, costs = zip(*(sample_features(s, hw) for s in test))
        out += [(s, c.total_ms * f) for s, c, f in zip(test, costs, correction.factors(list(rows)))]
    return out
