"""Argument types of the ``laudnet`` commands, shared by all of them.

Each parses one option's text and checks it with :mod:`laudnet.checks`, raising
``argparse.ArgumentTypeError``, so that argparse names the option in its one-line usage
error (exit code 2).
"""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

from .. import checks

T = TypeVar("T")


def _parsed(text: str, convert: Callable[[str], T], kind: str) -> T:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None


def _checked(check: Callable[..., T], *args) -> T:
    try:
        return check(*args)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    return _checked(checks.positive_int, "value", _parsed(text, int, "an integer"))


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    return _checked(checks.integer, "value", _parsed(text, int, "an integer"), 0)


def rate(text: str) -> float:
    """An activation rate: a number in [0, 1]."""
    return _checked(checks.rate, "rate", _parsed(text, float, "a number"))


def _list(text: str, item: Callable[[str], T], expected: str) -> list[T]:
    try:
        return [item(word) for word in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected {expected} separated by commas, got {text!r}") from None


def positive_int_list(text: str) -> list[int]:
    """Positive integers separated by commas, e.g. ``1,8``."""
    return _list(text, positive_int, "positive integers")


def rate_list(text: str) -> list[float]:
    """Activation rates separated by commas, e.g. ``0.5,1``."""
    return _list(text, rate, "activation rates in [0, 1]")


def name_list(text: str) -> list[str]:
    """Names separated by commas, blanks dropped, e.g. ``resnet50,mobilenet_v2``."""
    return [name.strip() for name in text.split(",") if name.strip()]
