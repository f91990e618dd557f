"""Training: losses, data, the training loop and distributed helpers."""

from .losses import flops_budget_loss, rate_bounds

__all__ = ["flops_budget_loss", "rate_bounds"]
