"""Training: the budget and distillation losses and the training loop.

``train(RunSpec(...), TrainConfig(...), out_dir)`` runs one training job (a static teacher
with ``TrainConfig(static=True)``, or a dynamic student with ``RunSpec(teacher=...)``).
"""

from ..checkpoint import RunSpec, load_checkpoint, model_from_checkpoint
from ..errors import NonFiniteError
from .losses import budget_loss, distillation_loss, flops_budget_loss, latency_budget_loss, rate_bounds
from .loop import Trainer, TrainConfig, resume, train

__all__ = ["NonFiniteError", "RunSpec", "TrainConfig", "Trainer", "budget_loss", "distillation_loss",
           "flops_budget_loss", "latency_budget_loss", "load_checkpoint", "model_from_checkpoint", "rate_bounds",
           "resume", "train"]
