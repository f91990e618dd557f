"""Validation of the arguments of public functions.

Each check returns the value in its canonical type or raises with a message that names the
argument, the value given and what is allowed: ``TypeError`` for a value of the wrong kind,
``ValueError`` for one out of range.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Iterable, Mapping, Sequence


def _given(value) -> str:
    return f"{value!r} (a {type(value).__name__})"


def integer(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an ``int`` of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {_given(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def positive_int(name: str, value) -> int:
    """``value`` as an ``int`` of at least 1."""
    return integer(name, value, minimum=1)


def number(name: str, value, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if low is None:
        bounds = "" if high is None else f" of at most {high:g}"
    elif high is None:
        bounds = f" greater than {low:g}" if low_open else f" of at least {low:g}"
    else:
        bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number{bounds}, got {_given(value)}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value}")
    return value


def rate(name: str, value) -> float:
    """An activation rate: a number in ``[0, 1]``."""
    return number(name, value, 0.0, 1.0)


def block_rates(rates: Mapping, names: Sequence[str]) -> dict[str, float]:
    """One activation rate per dynamic block from a dict that names every block in ``names``
    exactly, in the order of ``names``."""
    unknown = sorted(set(rates) - set(names))
    missing = [n for n in names if n not in rates]
    if unknown or missing:
        raise ValueError(f"rates per block must name every dynamic block exactly; unknown {unknown[:5]}, "
                         f"missing {missing[:5]}; blocks: {', '.join(names[:8])}{'...' if len(names) > 8 else ''}")
    return {n: rate(f"activation rate of block {n}", rates[n]) for n in names}


def flag(name: str, value) -> bool:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_given(value)}")
    return value


def choice(name: str, value, allowed: Iterable[str]) -> str:
    """One of the words ``allowed``."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} is {value!r}; allowed: {', '.join(allowed)}")
    return value
