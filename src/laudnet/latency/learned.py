"""A learned operator-latency predictor (nn-Meter style): one gradient-boosted regressor per
operator kind, trained on the calibration measurements of a profile.

Each regressor maps shape features of an operator (logarithms of its GEMM dimensions,
channels, map size, MACs and bytes) to the logarithm of its measured time. A block or a
network is priced as the sum of its plan operators, like the analytic model; kinds with
too few measurements, the index operators and the fixed per-block cost keep the analytic
model of the profile. Training is seeded, so predictions are deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from ..sparse.plan import Op
from .cost import Cost, gemm_dims, op_cost, output_bytes, weight_bytes
from .hardware import Hardware
from .samples import Sample

MIN_SAMPLES = 8
_CACHE: dict[tuple, "LearnedPredictor"] = {}


def features(op: Op) -> list[float]:
    """Shape features of one repetition of ``op`` (its kind's regressor's inputs)."""
    log = lambda v: math.log(max(float(v), 1.0))  # noqa: E731
    if op.kind in ("gemm", "conv"):
        m, k, n, groups = gemm_dims(op)
        row = [log(m), log(k), log(n), log(groups), log(op.macs), log(op.bytes), log(weight_bytes(op)),
               log(output_bytes(op)), log(m * k * 4 * groups)]
        if op.kind == "conv":
            batch, c_in, c_out, kernel, stride, _, out_h, out_w = op.shape
            row += [log(batch), log(c_in), log(c_out), float(kernel), float(stride), log(out_h * out_w)]
        return row
    return [log(op.bytes), log(op.macs)] + [log(v) for v in op.shape]


class LearnedPredictor:
    """Gradient-boosted regressors per operator kind; ``op_cost`` prices one plan operator."""

    def __init__(self, samples: list[Sample], fallback: Hardware, seed: int = 0) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        self.fallback = fallback
        by_kind: dict[tuple[str, int], tuple[list, list]] = {}
        for s in samples:
            if s.family == "block" or len(s.ops) != 1 or s.ops[0].kind == "index":
                continue
            op = s.ops[0]
            xs, ys = by_kind.setdefault((op.kind, len(features(op))), ([], []))
            xs.append(features(op))
            ys.append(math.log(s.ms / op.count))
        self.models = {}
        for (kind, _), (xs, ys) in sorted(by_kind.items(), key=lambda item: -len(item[1][0])):
            if len(xs) < MIN_SAMPLES or kind in self.models:
                continue
            model = GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8,
                                              random_state=seed)
            self.models[kind] = model.fit(np.array(xs), np.array(ys))

    @classmethod
    def for_hardware(cls, hw: Hardware) -> "LearnedPredictor":
        """The predictor trained on ``hw``'s calibration samples (cached per profile)."""
        if not hw.samples:
            raise ValueError(f"the learned predictor needs calibration measurements, which profile {hw.name!r} "
                             "does not have; run `laudnet latency calibrate` and use hardware 'local'")
        key = (hw.name, str(hw.path), len(hw.samples), tuple(s["ms"] for s in hw.samples[:50]))
        if key not in _CACHE:
            _CACHE[key] = cls([Sample.from_dict(s) for s in hw.samples], hw)
        return _CACHE[key]

    def op_cost(self, op: Op) -> Cost:
        model = self.models.get(op.kind)
        if model is None or model.n_features_in_ != len(features(op)):  # untrained kind, or no shape
            return op_cost(op, self.fallback)
        ms = float(np.exp(model.predict(np.array([features(op)]))[0])) * op.count
        return Cost(compute_ms=ms) if op.kind in ("gemm", "conv") else Cost(memory_ms=ms)
