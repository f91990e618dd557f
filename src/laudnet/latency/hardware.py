"""Hardware profiles: the devices the latency predictor knows, as data files.

A profile is a JSON file with the datasheet figures of a device (processing engines, FP32
lanes per engine, clock, memory bandwidth, caches, per-kernel launch or per-op dispatch
overhead, optional tensor-core throughput), the sources of those figures, and the
efficiency parameters of the cost model (:mod:`laudnet.latency.cost`). The shipped
profiles live in ``laudnet/latency/profiles/``; ``laudnet latency calibrate`` writes a
``local`` profile measured on this machine into the user profile directory
(``$LAUDNET_PROFILE_DIR``, else ``$XDG_CACHE_HOME/laudnet/profiles``, else
``~/.cache/laudnet/profiles``), which takes precedence over a shipped profile of the same name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

KINDS = ("cpu", "gpu")
REQUIRED = ("name", "title", "kind", "engines", "fp32_lanes", "clock_ghz", "memory_bandwidth_gbs", "caches",
            "launch_us", "model", "sources")

SHIPPED_DIR = Path(__file__).with_name("profiles")


def user_profile_dir() -> Path:
    """Where calibration writes profiles (never inside the installed package)."""
    if os.environ.get("LAUDNET_PROFILE_DIR"):
        return Path(os.environ["LAUDNET_PROFILE_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "laudnet" / "profiles"


@dataclass(frozen=True)
class Cache:
    """One cache level: total size in KiB and sustained bandwidth in GB/s."""

    level: str
    size_kb: float
    bandwidth_gbs: float


@dataclass(frozen=True)
class Hardware:
    """A device profile. ``model`` holds the cost-model parameters (see :mod:`.cost`)."""

    name: str
    title: str
    kind: str
    engines: int
    fp32_lanes: int
    clock_ghz: float
    memory_bandwidth_gbs: float
    caches: tuple[Cache, ...]
    launch_us: float
    model: dict[str, Any]
    sources: tuple[str, ...]
    calibrated: bool = False
    tensor_tflops: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    path: Path | None = None
    samples: tuple[dict, ...] = ()
    """Calibration measurements (``local`` profiles); their network pieces train the learned correction."""
    reference_ms: tuple[float, ...] = ()
    """Times of the drift reference workload read during calibration (:mod:`laudnet.measure.drift`)."""
    time_scale: float = 1.0
    """Factor on every predicted time: how much slower this machine runs than when the
    profile was calibrated (:meth:`scaled`)."""

    def scaled(self, factor: float) -> "Hardware":
        """This profile predicting ``factor`` times its times (a machine that drifted)."""
        return replace(self, time_scale=self.time_scale * factor)

    @property
    def peak_gmacs(self) -> float:
        """FP32 multiply-accumulates per second, in billions: engines × lanes × clock."""
        return self.engines * self.fp32_lanes * self.clock_ghz

    @property
    def peak_tflops(self) -> float:
        """FP32 peak in TFLOPS (two FLOPs per multiply-accumulate)."""
        return 2 * self.peak_gmacs / 1000

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in REQUIRED if k != "caches"}
        data["caches"] = [c.__dict__ for c in self.caches]
        data["sources"] = list(self.sources)
        data.update(calibrated=self.calibrated, tensor_tflops=self.tensor_tflops, notes=self.notes)
        if self.reference_ms:
            data["reference_ms"] = list(self.reference_ms)
        return data

    def describe(self) -> str:
        """A plain-text description with the sources, for ``laudnet hardware show``."""
        lines = [f"{self.name}: {self.title} ({self.kind.upper()}, "
                 f"{'calibrated on this machine' if self.calibrated else 'uncalibrated: figures from datasheets'})",
                 f"  engines:          {self.engines} × {self.fp32_lanes} FP32 lanes at {self.clock_ghz:g} GHz "
                 f"= {self.peak_tflops:.3g} TFLOPS FP32",
                 f"  memory bandwidth: {self.memory_bandwidth_gbs:g} GB/s"]
        for c in self.caches:
            lines.append(f"  {c.level:<17} {c.size_kb:g} KiB at {c.bandwidth_gbs:g} GB/s")
        lines.append(f"  {'launch' if self.kind == 'gpu' else 'dispatch'} overhead: {self.launch_us:g} µs per "
                     f"{'kernel' if self.kind == 'gpu' else 'operator'}")
        if self.tensor_tflops:
            lines.append("  tensor cores:     " + ", ".join(f"{k} {v:g} TFLOPS" for k, v in self.tensor_tflops.items())
                         + " (not used by the FP32 model)")
        lines.append("  model parameters: " + json.dumps(self.model, sort_keys=True))
        if self.notes:
            lines.append(f"  notes: {self.notes}")
        lines.append("  sources:")
        lines.extend(f"    - {s}" for s in self.sources)
        return "\n".join(lines)


def _readings(value: float | list[float] | None) -> tuple[float, ...]:
    """The drift reference readings of a profile (older profiles stored one reading)."""
    if value is None:
        return ()
    return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),)


def _parse(data: dict[str, Any], origin: str, path: Path | None = None) -> Hardware:
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"hardware profile {origin} lacks {', '.join(missing)}")
    if data["kind"] not in KINDS:
        raise ValueError(f"hardware profile {origin}: kind {data['kind']!r} is unknown; allowed: {', '.join(KINDS)}")
    for key in ("engines", "fp32_lanes", "clock_ghz", "memory_bandwidth_gbs"):
        if not (isinstance(data[key], (int, float)) and data[key] > 0):
            raise ValueError(f"hardware profile {origin}: {key} must be a positive number, got {data[key]!r}")
    if not data["sources"]:
        raise ValueError(f"hardware profile {origin} names no source")
    caches = tuple(Cache(c["level"], float(c["size_kb"]), float(c["bandwidth_gbs"])) for c in data["caches"])
    return Hardware(name=data["name"], title=data["title"], kind=data["kind"], engines=int(data["engines"]),
                    fp32_lanes=int(data["fp32_lanes"]), clock_ghz=float(data["clock_ghz"]),
                    memory_bandwidth_gbs=float(data["memory_bandwidth_gbs"]), caches=caches,
                    launch_us=float(data["launch_us"]), model=dict(data["model"]), sources=tuple(data["sources"]),
                    calibrated=bool(data.get("calibrated", False)), tensor_tflops=dict(data.get("tensor_tflops", {})),
                    notes=data.get("notes", ""), path=path, samples=tuple(data.get("samples", ())),
                    reference_ms=_readings(data.get("reference_ms")))


def _profile_files() -> dict[str, Path]:
    files = {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.json"))}
    user = user_profile_dir()
    if user.is_dir():
        files.update({p.stem: p for p in sorted(user.glob("*.json"))})
    return files


def list_hardware() -> list[str]:
    """Names of the known profiles (shipped and calibrated), sorted."""
    return sorted(_profile_files())


def load_hardware(hardware: str | Path | Hardware) -> Hardware:
    """A profile by name (``"v100"``, ``"local"``, …), by path to a JSON file, or as given."""
    if isinstance(hardware, Hardware):
        return hardware
    if not isinstance(hardware, (str, Path)):
        raise TypeError(f"hardware must be a profile name (see `laudnet hardware list`), a path to a JSON "
                        f"profile or a Hardware, got {hardware!r}")
    files = _profile_files()
    path = Path(hardware)
    if str(hardware) in files:
        path = files[str(hardware)]
    elif not (path.suffix == ".json" and path.is_file()):
        hint = (" (run `laudnet latency calibrate` to measure this machine)" if str(hardware) == "local" else "")
        raise ValueError(f"unknown hardware {str(hardware)!r}{hint}; known: {', '.join(sorted(files))}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read hardware profile {path}: {error}") from None
    return _parse(data, str(path), path)


def save_hardware(data: dict[str, Any], path: Path) -> Hardware:
    """Validate ``data`` as a profile and write it to ``path`` atomically."""
    profile = _parse(data, str(path), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return profile
