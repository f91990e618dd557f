"""Kernel choice by measurement: which backend runs an operator shape fastest here.

The same convolution or GEMM can run on several backends (``aten``: PyTorch's own
``F.conv2d`` / ``addmm``, which call MKL or oneDNN as PyTorch decides; ``onednn``: oneDNN
with pre-packed, BN-folded weights and the activation fused). Which is fastest depends on
the CPU, the library versions and the shape: on one machine MKL's GEMM runs at half
oneDNN's speed, on another they tie and pre-packing wins only on small maps. So the choice
is never made from a vendor or model string: the first time a shape is seen, each
candidate runs on the real operands, interleaved, and the fastest wins; the choice is
cached in memory and on disk per machine (like cuDNN's benchmark mode), so the next
process starts with it.

``LAUDNET_KERNEL=aten`` (or ``onednn``) or :func:`force_backend` bypasses the measurement
(tests compare every backend with the reference). ``LAUDNET_CACHE_DIR`` moves the cache
(default ``~/.cache/laudnet``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from ..machine import cores, cpu_flags, cpu_name

BACKENDS = ("aten", "onednn")
ROUNDS = 5
"""Interleaved timing rounds per candidate when a shape is first seen (after one warm-up)."""

_forced: str | None = os.environ.get("LAUDNET_KERNEL") or None
_choices: dict[str, dict[str, str]] | None = None
"""Machine key → operator key → backend; ``None`` until the cache file is read."""


def _check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"kernel backend {backend!r} is unknown; allowed: {', '.join(BACKENDS)}")


_check_backend(_forced)


def force_backend(backend: str | None) -> None:
    """Run every operator on ``backend`` where it can (``None``: choose by measurement)."""
    global _forced
    _check_backend(backend)
    _forced = backend


def forced() -> str | None:
    """The backend every operator is forced onto, if any."""
    return _forced


@contextlib.contextmanager
def forced_backend(backend: str | None) -> Iterator[None]:
    """:func:`force_backend` for a ``with`` block."""
    previous = _forced
    force_backend(backend)
    try:
        yield
    finally:
        force_backend(previous)


def machine_key() -> str:
    """What the cached choices depend on: CPU, its flags, cores, threads and torch's version."""
    text = f"{cpu_name()}|{sorted(cpu_flags())}|{cores()}|{torch.get_num_threads()}|{torch.__version__}"
    return (f"{cpu_name()} · {cores()} cores · {torch.get_num_threads()} threads · torch {torch.__version__} · "
            + hashlib.sha1(text.encode()).hexdigest()[:10])


def cache_path() -> Path:
    """The JSON file of cached choices."""
    root = os.environ.get("LAUDNET_CACHE_DIR") or Path.home() / ".cache" / "laudnet"
    return Path(root) / "kernels.json"


def _load() -> dict[str, str]:
    """The choices for this machine as it is now (its thread count may change within a
    process); the cache file is read once per process."""
    global _choices
    if _choices is None:
        try:
            saved = json.loads(cache_path().read_text())
            _choices = {key: dict(value) for key, value in saved.items() if isinstance(value, dict)}
        except (OSError, ValueError, AttributeError):
            _choices = {}
    return _choices.setdefault(machine_key(), {})


def _save() -> None:
    """Write the choices of this machine atomically; a cache that cannot be written is
    only a lost speed-up for the next process, never an error."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                saved = {}
        except (OSError, ValueError):
            saved = {}
        saved[machine_key()] = dict(sorted(_load().items()))
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(saved, f, indent=1)
        os.replace(f.name, path)
    except OSError:
        pass


def choices() -> dict[str, str]:
    """The choices made so far on this machine (operator key → backend)."""
    return dict(_load())


def clear_choices() -> None:
    """Forget the choices (in memory; the file keeps them until the next choice is saved)."""
    global _choices
    _choices = {}


def _time(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def choose(key: str, candidates: Mapping[str, Callable[[], object]]) -> str:
    """The backend to run operator ``key`` on, among ``candidates`` (backend → a call of
    the operator on real operands). Measured once per key and machine, then cached."""
    if _forced is not None and _forced in candidates:
        return _forced
    names = list(candidates)
    if len(names) == 1:
        return names[0]
    known = _load().get(key)
    if known in candidates:
        return known
    with torch.no_grad():
        for name in names:  # warm-up: packing, allocation, code paths
            candidates[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(ROUNDS):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[name].append(_time(candidates[name]))
    best = min(names, key=lambda n: sorted(times[n])[len(times[n]) // 2])
    _load()[key] = best
    _save()
    return best
