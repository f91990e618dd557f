"""Training: losses, data, the training loop and distributed helpers.

``train(RunSpec(...), TrainConfig(...), out_dir)`` runs one training job (a static teacher
with ``TrainConfig(static=True)``, or a dynamic student with ``RunSpec(teacher=...)``).
"""

from .data import DATASETS, DataInfo, DataSplits, build_datasets
from .losses import budget_loss, distillation_loss, flops_budget_loss, latency_budget_loss, rate_bounds
from .loop import (NonFiniteError, RunSpec, Trainer, TrainConfig, load_checkpoint, model_from_checkpoint,
                   resume, train)

__all__ = ["DATASETS", "DataInfo", "DataSplits", "NonFiniteError", "RunSpec", "TrainConfig", "Trainer",
           "budget_loss", "build_datasets", "distillation_loss", "flops_budget_loss", "latency_budget_loss",
           "load_checkpoint", "model_from_checkpoint", "rate_bounds", "resume", "train"]
