"""The training loop: a static teacher first, then a dynamic student with a budget.

One step minimises ``L + λ × budget + α × KD``: the task's loss (cross-entropy for
classification; the detector's losses for detection), the FLOPs budget of the gates
(:func:`flops_budget_loss`) and distillation from the static teacher (its logits, or a
detector's FPN features; :mod:`.tasks`). The Gumbel temperature anneals over the run;
the learning rate warms up linearly, then follows a cosine; the gates have their own
learning-rate multiplier and no weight decay. A *static* run (``TrainConfig.static``)
trains the same network without gates: that is the teacher (and, given a teacher, the
static reference that is fine-tuned exactly as the students are).

A run lives in one directory: ``checkpoint.pt`` (written atomically after each epoch; it
holds everything needed to resume or evaluate), ``epochs.csv`` and ``steps.csv`` logs and
TensorBoard events. Each epoch reseeds every generator from ``(seed, epoch, rank)``, so a
resumed run takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import checks
from ..checkpoint import CHECKPOINT, RunSpec, load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint
from ..data.build import DataSplits
from ..distributed import Context, all_reduce_sum, barrier, wrap
from ..dynamic import gate_parameters, set_execution, stats
from ..errors import NonFiniteError
from ..gates import SCHEDULES, set_temperature, temperature_schedule
from ..measure.drift import current_reference_ms
from ..models.weights import backbone_state_dict, load_backbone
from ..outputs import check_directory, claim
from ..progress import progress_bar
from .losses import budget_loss, check_budget
from .runlog import RunLog
from .tasks import DISTILL_REGIONS, Classification, Task, task_of, to_device

OPTIMIZERS = ("sgd", "adamw")
logger = logging.getLogger("laudnet")
_KIND_CHECKS = {"int": checks.integer, "float": checks.number, "bool": checks.flag}
"""The check of each field kind of :class:`TrainConfig`."""


@dataclass
class TrainConfig:
    """How to train (defaults suit the small CIFAR-style ResNets).

    ``target`` is the FLOPs ratio the budget aims at; ``bound_warmup`` the share of the run
    over which the per-block rate bounds relax (:func:`laudnet.rate_bounds`), the upper
    one to ``max_rate``.
    ``budget_weight`` is λ and ``distill_weight`` α (used when there is a teacher);
    ``background_weight`` β weighs the background a detector's spatial gates keep.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    gate_lr_mult: float = 1.0
    static: bool = False
    target: float = 0.5
    budget_ms: float | None = None
    hardware: str | None = None
    budget_batch_size: int = 1
    budget_weight: float = 20.0
    bound_warmup: float = 0.1
    max_rate: float = 1.0
    distill_weight: float = 1.0
    distill_temperature: float = 4.0
    distill_region: str = "image"
    background_weight: float = 0.0
    tau_schedule: str = "exponential"
    tau_start: float = 5.0
    tau_end: float = 0.1
    clip_grad: float | None = 5.0
    bf16: bool = False
    seed: int = 0
    log_every: int = 20
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for item in fields(self):  # kinds first; every number finite (an infinite rate is as bad as a NaN)
            value, kind = getattr(self, item.name), item.type.removesuffix(" | None")
            if value is not None or kind == item.type:
                if kind in _KIND_CHECKS:
                    setattr(self, item.name, _KIND_CHECKS[kind](item.name, value))
                elif kind == "str" and not isinstance(value, str):
                    raise TypeError(f"{item.name} must be a string, got {value!r}")
        check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        check(self.optimizer in OPTIMIZERS,
              f"optimizer {self.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
        check(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"weight decay must be non-negative, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(self.warmup_epochs >= 0, f"warm-up epochs must be non-negative, got {self.warmup_epochs}")
        check(self.gate_lr_mult > 0, f"gate learning-rate multiplier must be positive, got {self.gate_lr_mult}")
        check(0 < self.target <= 1, f"FLOPs target must be in (0, 1], got {self.target}")
        check(self.budget_weight >= 0, f"budget weight must be non-negative, got {self.budget_weight}")
        check(0 <= self.bound_warmup <= 1, f"bound warm-up must be in [0, 1], got {self.bound_warmup}")
        check(self.distill_weight >= 0, f"distillation weight must be non-negative, got {self.distill_weight}")
        check(self.distill_temperature > 0,
              f"distillation temperature must be positive, got {self.distill_temperature}")
        checks.choice("distillation region", self.distill_region, DISTILL_REGIONS)
        checks.number("background weight", self.background_weight, 0.0)
        check(self.tau_schedule in SCHEDULES,
              f"temperature schedule {self.tau_schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
        check(self.tau_start > 0 and self.tau_end > 0,
              f"Gumbel temperatures must be positive, got {self.tau_start} and {self.tau_end}")
        check(self.clip_grad is None or self.clip_grad > 0,
              f"gradient clipping norm must be positive, got {self.clip_grad}")
        check(self.log_every >= 1, f"log interval must be at least 1 step, got {self.log_every}")
        if not self.static:  # refuses bad budget settings before training starts (no timing here)
            check_budget(self.target, self.budget_ms, self.hardware, self.budget_batch_size, self.max_rate)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank."""
    return seed * 1_000_003 + epoch * 1_009 + rank


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: linear warm-up to 1, then a cosine to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; the gates in their own group (lr × ``gate_lr_mult``, no
    weight decay). A static run leaves the gates out: they do not take part."""
    gate_ids = {id(p) for p in gate_parameters(model)}
    backbone = [p for p in model.parameters() if id(p) not in gate_ids]
    groups = [{"params": backbone, "weight_decay": config.weight_decay, "lr": config.lr}]
    if gate_ids and not config.static:
        groups.append({"params": gate_parameters(model), "weight_decay": 0.0,
                       "lr": config.lr * config.gate_lr_mult})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def shared_reference(context: Context) -> Callable[[], float]:
    """The drift reference (:func:`laudnet.measure.drift.current_reference_ms`) timed on rank
    0 only and shared with the other ranks, so that every rank rescales the latency profile
    alike and the ranks' timings do not disturb each other."""
    def measure() -> float:
        value = current_reference_ms() if context.is_main else 0.0
        shared = all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=context.device), context)
        return float(shared[0])

    return measure


class Trainer:
    """One model's optimisation state and its training step.

    ``model`` is the bare network (it is wrapped for distributed training here); the
    ``teacher``, if any, runs in static execution without gradients; ``task`` says what
    the loss and the validation are (classification by default).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, steps_per_epoch: int,
                 teacher: nn.Module | None = None, context: Context = Context(),
                 task: Task | None = None) -> None:
        self.task = task or Classification(config.distill_temperature)
        self.net = model.to(context.device)
        self.budget = None if config.static else budget_loss(config.target, config.budget_ms, config.hardware,
                                                             config.budget_batch_size, shared_reference(context),
                                                             report=context.is_main, max_rate=config.max_rate)
        self.config = config
        self.context = context
        set_execution(self.net, "static" if config.static else "masked")
        self.teacher = None
        if teacher is not None and config.distill_weight > 0:
            self.teacher = set_execution(teacher.to(context.device).eval(), "static").requires_grad_(False)
        self.model = wrap(self.net, context, find_unused_parameters=config.static and bool(gate_parameters(model)))
        self.optimizer = build_optimizer(self.net, config)
        self.total_steps = config.epochs * steps_per_epoch
        warmup = round(config.warmup_epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(self.total_steps, warmup))
        self.tau = temperature_schedule(config.tau_schedule, config.tau_start, config.tau_end)
        self.steps = 0

    @property
    def progress(self) -> float:
        return self.steps / self.total_steps

    def step(self, inputs, targets) -> dict[str, float]:
        """One optimisation step; returns the loss terms (``ce`` is the task's loss), the
        FLOPs ratio and the task's own figures (batch accuracy; each detection loss),
        averaged over the ranks. Raises
        :class:`NonFiniteError` before applying a step whose loss is not finite, and after
        one that made a weight or statistic non-finite."""
        config = self.config
        inputs, targets = to_device(inputs, targets, self.context.device)
        self.model.train()
        if not config.static:
            set_temperature(self.net, self.tau(self.progress))
        with torch.autocast(self.context.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            ce, kd, extra = self.task.losses(self.model, self.net, self.teacher, inputs, targets)
        budget, flops_ratio = ce.new_zeros(()), ce.new_ones(())
        if not config.static:
            relax = self.progress / config.bound_warmup if config.bound_warmup > 0 else 1.0
            budget = self.budget(self.net, relax)
            flops_ratio = ce.new_tensor(stats(self.net).flops_ratio)
        loss = ce + config.budget_weight * budget + config.distill_weight * kd
        names = ("loss", "ce", "budget", "kd", "flops_ratio", *extra)
        values = torch.stack([loss, ce, budget, kd, flops_ratio, *extra.values()]).detach().float()
        values = all_reduce_sum(values, self.context) / self.context.world_size
        if not torch.isfinite(values[0]):
            raise NonFiniteError(f"loss is {float(values[0])} at step {self.steps + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), config.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        self.check_finite()
        return dict(zip(names, values.tolist()))

    @torch.no_grad()
    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` if a weight or floating buffer (batch-norm
        statistics) of any rank is NaN or infinite."""
        tensors = [t for t in (*self.net.parameters(), *self.net.buffers()) if t.is_floating_point()]
        bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).float()
        bad = all_reduce_sum(bad, self.context)
        if bad.any():
            names = [n for n, t in (*self.net.named_parameters(), *self.net.named_buffers()) if t.is_floating_point()]
            first = names[int(bad.nonzero()[0])]
            raise NonFiniteError(f"weights became non-finite in the update of step {self.steps} "
                                 f"({int((bad > 0).sum())} tensors, first {first})")

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        """The task's score (``val_accuracy``, ``val_AP``) and mean FLOPs ratio on
        ``loader``, in eval mode and the training execution (the gates decide
        deterministically)."""
        return self.task.validate(self.net, loader, self.context)

    def state_dict(self) -> dict:
        return {"state_dict": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.steps}

    def load_state_dict(self, state: dict) -> None:
        load_weights(self.net, state["state_dict"], state.get("path", "the checkpoint"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["step"]


# --------------------------------------------------------------------- the run
def load_teacher(spec: RunSpec, splits: DataSplits) -> tuple[nn.Module, RunSpec]:
    """The static teacher named by ``spec.teacher`` and its spec, checked against the data."""
    state = load_checkpoint(spec.teacher)
    if not state["config"]["static"]:
        raise ValueError(f"teacher {spec.teacher} is not a static run; train one with `laudnet train --static`")
    teacher_spec = RunSpec(**state["spec"])
    if teacher_spec.dataset != spec.dataset:
        raise ValueError(f"teacher {spec.teacher} was trained on {teacher_spec.dataset}, not {spec.dataset}")
    return model_from_checkpoint(state, splits), teacher_spec


def train(spec: RunSpec, config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          context: Context = Context(), workers: int = 0) -> Path:
    """Train ``spec`` with ``config`` into ``out_dir``; return the checkpoint's path.

    The student starts from the teacher's weights when both have the same architecture
    (otherwise it starts from random weights, and a warning says so). With ``resume``, the
    run continues from ``out_dir/checkpoint.pt``, whose spec and config must be those given.
    The run holds ``out_dir`` (:func:`laudnet.outputs.claim`): a second run into it is
    refused. A non-finite loss, weight or metric stops the run with
    :class:`NonFiniteError`, leaving the last checkpoint as it was.
    """
    what = "run directory"  # rank 0 holds the directory; the others only check it
    holder = claim(out_dir, what) if context.is_main else nullcontext(check_directory(out_dir, what))
    with holder as checked:
        return _train(spec, config, checked, resume, context, workers)


def _train(spec: RunSpec, config: TrainConfig, out_dir: Path, resume: bool, context: Context, workers: int) -> Path:
    checkpoint_path = out_dir / CHECKPOINT
    previous = None
    if resume:
        previous = load_checkpoint(checkpoint_path)
        for name, given, stored in (("spec", spec, previous["spec"]), ("config", config, previous["config"])):
            # a setting newer than the checkpoint: its run had the default
            changed = sorted(k for k, value in asdict(given).items() if value != stored.get(k, getattr(type(given), k, None)))
            if changed:
                raise ValueError(f"cannot resume {checkpoint_path}: its {name} differs in {', '.join(changed)}")
    elif checkpoint_path.exists():
        raise ValueError(f"{checkpoint_path} exists; pass --resume to continue that run or choose another --out")

    seed_everything(config.seed)
    splits = spec.datasets()
    model = spec.build_model(splits)
    teacher = None
    if spec.teacher is not None:
        teacher, teacher_spec = load_teacher(spec, splits)
        if previous is None and teacher_spec.model == spec.model:
            load_backbone(model, backbone_state_dict(teacher))
        elif previous is None and context.is_main:
            logger.warning(f"the teacher {spec.teacher} is a {teacher_spec.model}, the student a {spec.model}: the "
                           "student starts from random weights; the teacher is used for distillation only")
    task = task_of(splits.info.task, config.distill_temperature, config.distill_region, config.background_weight)
    loader, val = task.loaders(splits.train, splits.test, config.batch_size, config.seed, context, workers)
    trainer = Trainer(model, config, len(loader), teacher, context, task)
    history: list[dict] = []
    start_epoch = 0
    if previous is not None:
        trainer.load_state_dict(previous)
        history, start_epoch = previous["history"], previous["epoch"]
    log = RunLog(out_dir, config.tensorboard, context.is_main, trainer.steps, history)
    state = {"spec": asdict(spec), "config": asdict(config), "world_size": context.world_size}
    try:
        for epoch in range(start_epoch, config.epochs):
            seed_everything(epoch_seed(config.seed, epoch, context.rank))
            loader.sampler.set_epoch(epoch)
            started = time.perf_counter()
            sums: dict[str, float] = {}
            bar = progress_bar(loader, f"epoch {epoch + 1}/{config.epochs}", config.progress_bar and context.is_main)
            for inputs, targets in bar:
                try:
                    metrics = trainer.step(inputs, targets)
                except NonFiniteError as error:
                    raise _stopped(error, epoch, checkpoint_path) from None
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                if trainer.steps % config.log_every == 0:
                    row = {"step": trainer.steps, "epoch": epoch + 1, "lr": trainer.scheduler.get_last_lr()[0],
                           "tau": trainer.tau(trainer.progress), **metrics}
                    log.step(row)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{metrics['loss']:.3f}", flops=f"{metrics['flops_ratio']:.2f}")
            count = max(1, len(loader))
            row = {"epoch": epoch + 1, "step": trainer.steps, **{k: v / count for k, v in sums.items()},
                   **trainer.validate(val), "seconds": time.perf_counter() - started}
            non_finite = [k for k, v in row.items() if not math.isfinite(v)]
            if non_finite:
                raise _stopped(NonFiniteError(f"the epoch's {', '.join(non_finite)} not finite"), epoch,
                               checkpoint_path)
            history.append(row)
            if context.is_main:
                log.epoch(row)
                save_checkpoint(checkpoint_path, {**state, **trainer.state_dict(), "epoch": epoch + 1,
                                                  "history": history})
                if config.progress_bar:
                    score = task.score
                    print(f"epoch {epoch + 1}: train loss {row['loss']:.3f}, val {score} "
                          f"{row['val_' + score]:.4f}, FLOPs ratio {row['val_flops_ratio']:.3f}", flush=True)
            barrier(context)
    finally:
        log.close()
    return checkpoint_path


def _stopped(error: NonFiniteError, epoch: int, checkpoint_path: Path) -> NonFiniteError:
    last = (f"the last good checkpoint is {checkpoint_path} (epoch {epoch})" if epoch > 0
            else "no checkpoint was written yet")
    return NonFiniteError(f"training stopped in epoch {epoch + 1}: {error}; {last}. Lower --lr or set --clip-grad")


def resume(out_dir: str | Path, context: Context = Context(), workers: int = 0) -> Path:
    """Continue the run in ``out_dir`` with the spec and config stored in its checkpoint."""
    state = load_checkpoint(Path(out_dir) / CHECKPOINT)
    config_names = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in state["config"].items() if k in config_names})
    return train(RunSpec(**state["spec"]), config, out_dir, resume=True, context=context, workers=workers)
