"""Progress bars on long loops (evaluation, training epochs)."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], description: str, enabled: bool = True) -> Iterable[T]:
    """``items`` behind a transient progress bar titled ``description`` (``items`` itself
    when ``enabled`` is false)."""
    if not enabled:
        return items
    return tqdm(items, desc=description, leave=False, dynamic_ncols=True)
