"""Training: losses, data, the training loop and distributed helpers."""

from .losses import budget_loss, flops_budget_loss, latency_budget_loss, rate_bounds

__all__ = ["budget_loss", "flops_budget_loss", "latency_budget_loss", "rate_bounds"]
