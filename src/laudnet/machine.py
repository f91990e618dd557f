"""What this machine is, for tables and caches: the CPU as /proc/cpuinfo describes it.

Descriptions only: nothing chooses a kernel from them (kernels are chosen by measurement,
:mod:`laudnet.sparse.tuning`).
"""

from __future__ import annotations

import functools
import os
import platform

VECTOR_EXTENSIONS = ("avx512f", "avx2", "avx", "neon", "asimd")
"""Vector extensions named in descriptions, widest first."""


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[tuple[str, str], ...]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return ()
    return tuple((key.strip(), value.strip()) for key, _, value in
                 (line.partition(":") for line in text.splitlines()) if key.strip())


def cpu_field(key: str) -> str | None:
    """A field of /proc/cpuinfo for the first processor, e.g. ``"model name"``."""
    return next((value for name, value in _cpuinfo() if name == key), None)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``avx2``, ``avx512f``, …)."""
    return set((cpu_field("flags") or cpu_field("Features") or "").split())


def cpu_name() -> str:
    """The CPU model with its family, model number and widest vector extension, e.g.
    ``AMD EPYC (family 25 model 1, avx2)``."""
    name = cpu_field("model name") or platform.processor() or platform.machine()
    details = [f"family {cpu_field('cpu family')} model {cpu_field('model')}"] if cpu_field("cpu family") else []
    flags = cpu_flags()
    details += [next(ext for ext in VECTOR_EXTENSIONS if ext in flags)] if flags & set(VECTOR_EXTENSIONS) else []
    return f"{name} ({', '.join(details)})" if details else name


def cores() -> int:
    return os.cpu_count() or 1
