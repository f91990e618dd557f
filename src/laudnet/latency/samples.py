"""A measured call of the sparse engine's kernels: what the learned predictor
(:mod:`laudnet.latency.learned`) learns from and what calibration
(:mod:`laudnet.measure.calibrate`) fits and stores in a profile."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sparse.plan import Op


@dataclass
class Sample:
    """A measured call: the plan operators it stands for and its median time in ms."""

    family: str
    ops: list[Op]
    ms: float
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(family=self.family, ms=self.ms, meta=self.meta,
                    ops=[dict(kind=o.kind, name=o.name, macs=o.macs, bytes=o.bytes, shape=list(o.shape),
                              count=o.count) for o in self.ops])

    @classmethod
    def from_dict(cls, data: dict) -> "Sample":
        ops = [Op(o["kind"], o["name"], o["macs"], o["bytes"], tuple(o["shape"]), o["count"]) for o in data["ops"]]
        return cls(data["family"], ops, float(data["ms"]), data.get("meta", {}))
