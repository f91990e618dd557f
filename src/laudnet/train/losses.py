"""Training losses: the compute budget of the gates, where detection gates spend it, and distillation
from the static model."""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import checks
from ..detection.regions import cells
from ..dynamic import dynamic_blocks, network_macs
from ..latency.hardware import Hardware, load_hardware
from ..latency.table import latency_table
from ..measure.drift import current_reference_ms, rescale_for_drift

logger = logging.getLogger("laudnet")


def rate_bounds(target: float, progress: float, max_rate: float = 1.0) -> tuple[float, float]:
    """Per-block activation-rate bounds ``(lower, upper)``.

    They start at the target (every block must meet it) and relax linearly to
    ``(0, max_rate)`` as ``progress`` (the share of the warm-up done) goes from 0 to 1, so
    that blocks can specialise once the network as a whole meets the budget. A
    ``max_rate`` below 1 keeps every block skipping part of its work (a block that keeps
    most of its patches runs dense: its skipping saves nothing); one below the target
    leaves the upper bound at the target.
    """
    relax = min(max(progress, 0.0), 1.0)
    return target * (1.0 - relax), target + (max(max_rate, target) - target) * relax


def latency_budget_loss(model: nn.Module, budget_ms: float, hardware: str | Hardware, batch_size: int = 1,
                        progress: float = 1.0, max_rate: float = 1.0) -> Tensor:
    """Latency budget of the last forward pass: the FLOPs budget's recipe with the latency
    the predictor gives for ``hardware`` in place of the FLOPs:

    ``mean_i[relu(r_i - ub)^2 + relu(lb - r_i)^2] + ((T - budget_ms) / T_static)^2``

    with ``T`` the predicted latency of one batch of ``batch_size`` images at the blocks'
    batch-mean activation rates ``r_i``, each block's latency interpolated linearly in its
    rate between predictions at a few rates (:func:`laudnet.latency.table.latency_table`,
    built at the first call and cached on the model), ``T_static`` that of the network
    without gates, and ``(lb, ub)`` :func:`rate_bounds` around the common rate at which the
    predicted latency meets the budget. Differentiable through the straight-through
    decisions of a masked, training-mode pass.
    """
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not budget_ms > 0:
        raise ValueError(f"latency budget must be a positive number of milliseconds, got {budget_ms!r}")
    table = latency_table(model, hardware, batch_size)
    lower, upper = rate_bounds(table.rate_for(budget_ms), progress, max_rate)
    blocks = dict(dynamic_blocks(model))
    rates = torch.stack([blocks[name].last.rate.mean() for name in table.names])
    bounds = (F.relu(rates - upper) ** 2 + F.relu(lower - rates) ** 2).mean()
    return bounds + ((table.predict(rates) - budget_ms) / table.static_ms) ** 2


def check_budget(target: float = 0.5, budget_ms: float | None = None, hardware: str | None = None,
                 batch_size: int = 1, max_rate: float = 1.0) -> Hardware | None:
    """Refuse bad budget settings (before training starts); return the device profile of a
    latency budget, ``None`` for a FLOPs budget."""
    checks.number("maximum activation rate", max_rate, 0.0, 1.0, low_open=True)
    if budget_ms is None:
        if hardware is not None:
            raise ValueError(f"hardware {hardware!r} is only used with a latency budget; give --budget-ms too")
        checks.number("FLOPs target", target, 0.0, 1.0, low_open=True)
        if max_rate < target:
            raise ValueError(f"maximum activation rate {max_rate:g} is below the FLOPs target {target:g}; "
                             "give a rate of at least the target")
        return None
    if hardware is None:
        raise ValueError("a latency budget needs a device: give --hardware NAME (see `laudnet hardware list`)")
    checks.number("latency budget in milliseconds", budget_ms, 0.0, low_open=True)
    checks.positive_int("latency budget batch size", batch_size)
    return load_hardware(hardware)


def budget_loss(target: float = 0.5, budget_ms: float | None = None, hardware: str | None = None,
                batch_size: int = 1, measure: Callable[[], float] = current_reference_ms,
                report: bool = True, max_rate: float = 1.0) -> Callable[[nn.Module, float], Tensor]:
    """The compute budget a training loop adds to its loss, as ``loss(model, progress)``:
    :func:`flops_budget_loss` at the FLOPs ratio ``target``, or with ``budget_ms``,
    :func:`latency_budget_loss` on ``hardware`` for batches of ``batch_size`` (the
    ``--budget-ms`` / ``--hardware`` / ``--budget-batch-size`` options of ``laudnet train``;
    ``max_rate`` caps each block's rate once the bounds have relaxed, ``--max-rate``),
    its calibrated profile rescaled to this machine's speed now (:mod:`laudnet.measure.drift`:
    ``measure`` times the reference; the finding is logged when ``report``)."""
    hw = check_budget(target, budget_ms, hardware, batch_size, max_rate)
    if hw is None:
        return lambda model, progress: flops_budget_loss(model, target, progress, max_rate)
    hw, drift = rescale_for_drift(hw, measure)
    if drift is not None and report:
        logger.warning(drift)
    return lambda model, progress: latency_budget_loss(model, budget_ms, hw, batch_size, progress, max_rate)


def flops_budget_loss(model: nn.Module, target: float, progress: float = 1.0, max_rate: float = 1.0) -> Tensor:
    """FLOPs-ratio budget of the last forward pass (LASNet/LAUDNet recipe):

    ``mean_i[relu(r_i - ub)^2 + relu(lb - r_i)^2] + (F / F_static - target)^2``

    with ``r_i`` the batch-mean activation rate of dynamic block i, ``(lb, ub)`` from
    :func:`rate_bounds`, and ``F`` the per-sample MACs the sparse path would execute.
    Differentiable through the straight-through decisions of a masked, training-mode pass.
    """
    checks.number("FLOPs target", target, 0.0, 1.0, low_open=True)
    dynamic, static, records = network_macs(model)
    lower, upper = rate_bounds(target, progress, max_rate)
    rates = torch.stack([record.rate.mean() for (_, record), (_, block) in zip(records, dynamic_blocks(model))
                         if block.config.paradigm != "none"])
    bounds = (F.relu(rates - upper) ** 2 + F.relu(lower - rates) ** 2).mean()
    return bounds + (dynamic.mean() / static - target) ** 2


def background_loss(model: nn.Module, image: Tensor, objects: Tensor) -> Tensor:
    """Share of the background that the spatial gates of the last forward pass kept: per
    spatial block, the kept patches among those in the ``image`` region and off the
    ``objects`` region (``(B, 1, H, W)`` maps of the input's pixels,
    :mod:`laudnet.detection.regions`), averaged over the blocks; 0 without spatial gates.
    Differentiable through the straight-through decisions of a masked, training-mode pass,
    it teaches the gates to spend the budget on objects, which the object boxes of a
    detection set show."""
    shares = []
    for _, block in dynamic_blocks(model):
        record = block.last
        if record is None or record.patches is None:
            continue
        rows, cols = record.patches.shape[-2:]
        background = cells(image, rows, cols) & ~cells(objects, rows, cols)
        shares.append((record.patches * background).sum() / background.sum().clamp(min=1))
    return torch.stack(shares).mean() if shares else image.new_zeros(())


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Knowledge distillation (Hinton et al.): ``T^2 * KL(softmax(t/T) || softmax(s/T))``,
    batch mean. The ``T^2`` keeps its gradients on the scale of the cross-entropy."""
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be positive, got {temperature}")
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2
