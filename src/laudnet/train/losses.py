"""Training losses: the compute budget of the gates and distillation from the static model."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..dynamic import dynamic_blocks, network_macs


def rate_bounds(target: float, progress: float) -> tuple[float, float]:
    """Per-block activation-rate bounds ``(lower, upper)``.

    They start at the target (every block must meet it) and relax linearly to ``(0, 1)``
    as ``progress`` (the share of the warm-up done) goes from 0 to 1, so that blocks can
    specialise once the network as a whole meets the budget.
    """
    relax = min(max(progress, 0.0), 1.0)
    return target * (1.0 - relax), target + (1.0 - target) * relax


def flops_budget_loss(model: nn.Module, target: float, progress: float = 1.0) -> Tensor:
    """FLOPs-ratio budget of the last forward pass (LASNet/LAUDNet recipe):

    ``mean_i[relu(r_i - ub)^2 + relu(lb - r_i)^2] + (F / F_static - target)^2``

    with ``r_i`` the batch-mean activation rate of dynamic block i, ``(lb, ub)`` from
    :func:`rate_bounds`, and ``F`` the per-sample MACs the sparse path would execute.
    Differentiable through the straight-through decisions of a masked, training-mode pass.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"FLOPs target must be in (0, 1], got {target}")
    dynamic, static, records = network_macs(model)
    lower, upper = rate_bounds(target, progress)
    rates = torch.stack([record.rate.mean() for (_, record), (_, block) in zip(records, dynamic_blocks(model))
                         if block.config.paradigm != "none"])
    bounds = (F.relu(rates - upper) ** 2 + F.relu(lower - rates) ** 2).mean()
    return bounds + (dynamic.mean() / static - target) ** 2


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Knowledge distillation (Hinton et al.): ``T^2 * KL(softmax(t/T) || softmax(s/T))``,
    batch mean. The ``T^2`` keeps its gradients on the scale of the cross-entropy."""
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be positive, got {temperature}")
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2
