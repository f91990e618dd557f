"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``, as in timm."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``builder`` under its function name."""
    _MODELS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    """Names ``create_model`` accepts, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered dynamic model, e.g.
    ``create_model("resnet50", paradigm="spatial", granularity="4-4-2-1")``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)
