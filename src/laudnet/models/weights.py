"""The weights of the static network inside a dynamic one: everything but the maskers."""

from __future__ import annotations

from typing import TypeVar

from torch import Tensor, nn

from ..gates import Masker

Network = TypeVar("Network", bound=nn.Module)


def backbone_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict without the maskers: the static network's weights."""
    gate_names = {f"{name}." for name, m in model.named_modules() if isinstance(m, Masker)}
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(g) for g in gate_names)}


def load_backbone(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load a static network's weights (e.g. torchvision's) into a dynamic model.

    Strict on the backbone: every backbone entry must be present with its shape, and no
    unknown entry is accepted; only the maskers keep their own initialisation.
    """
    expected = backbone_state_dict(model)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state dict does not match the backbone: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    model.load_state_dict(state_dict, strict=False)


def from_static(dynamic: Network, static: nn.Module) -> Network:
    """``dynamic`` holding all the weights of ``static`` (:func:`load_backbone`), on its
    device and dtype and in its training mode: the tail of every conversion."""
    load_backbone(dynamic, static.state_dict())
    parameter = next(static.parameters())
    return dynamic.to(device=parameter.device, dtype=parameter.dtype).train(static.training)
