"""What a training step optimises and how a run is validated, per task.

*Classification*: cross-entropy, distillation of the teacher's logits, top-1 accuracy.
*Detection* (a torchvision detector whose backbone body is dynamic): the detector's own
losses (RPN and box head, plus the mask head of Mask R-CNN), distillation of the teacher's
FPN features, COCO AP. Features rather than detections are distilled, as LAUDNet's
detection recipe does: they are dense (every position of every level teaches the gates
what the static backbone computes there), they are exactly what the dynamic body changes,
and they need no matching of the teacher's and the student's detections. The features are
distilled over the whole image, or only where objects are (``objects``: the positions
whose cell overlaps an object box, the fine-grained feature imitation of Wang et al.,
CVPR 2019), which leaves the gates free to skip the background, where the detector's
own losses still teach what is not an object. A background weight β adds β × the share of
the background the spatial gates kept (:func:`~laudnet.train.losses.background_loss`):
the boxes then show the gates where to spend the budget.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .. import checks
from ..data.loaders import collate_detection, eval_loader, train_loader
from ..detection.detectors import transformed_batches
from ..detection.metrics import evaluate_detector
from ..detection.regions import cells, image_pixels, object_pixels
from ..distributed import Context, all_reduce_sum, broadcast_buffers
from ..metrics import accumulate
from .losses import background_loss, distillation_loss


class Task(Protocol):
    """A training task: its loss, loaders and validation."""

    score: str
    """The name of the validation score the epoch logs report (``val_<score>``)."""

    def loaders(self, train: Dataset, test: Dataset, batch_size: int, seed: int, context: Context,
                workers: int) -> tuple[DataLoader, DataLoader]: ...

    def losses(self, model: nn.Module, net: nn.Module, teacher: nn.Module | None, inputs,
               targets) -> tuple[Tensor, Tensor, dict[str, Tensor]]: ...

    def validate(self, net: nn.Module, loader: DataLoader, context: Context) -> dict[str, float]: ...


DISTILL_REGIONS = ("image", "objects")


class Classification:
    """Cross-entropy, logit distillation (temperature ``--distill-temperature``), accuracy."""

    score = "accuracy"

    def __init__(self, temperature: float = 4.0) -> None:
        self.temperature = temperature

    def loaders(self, train, test, batch_size, seed, context, workers):
        return (train_loader(train, batch_size, seed=seed, rank=context.rank, world_size=context.world_size,
                             workers=workers),
                eval_loader(test, batch_size, rank=context.rank, world_size=context.world_size, workers=workers))

    def losses(self, model, net, teacher, inputs, targets):
        """``(cross-entropy, distillation, {"accuracy": batch accuracy})``; ``model`` is
        ``net`` as trained (wrapped for distributed training)."""
        logits = model(inputs)
        kd = logits.new_zeros(())
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            kd = distillation_loss(logits, teacher_logits, self.temperature)
        accuracy = (logits.argmax(1) == targets).float().mean()
        return F.cross_entropy(logits.float(), targets), kd, {"accuracy": accuracy}

    def validate(self, net, loader, context):
        """Top-1 accuracy and mean FLOPs ratio (each rank evaluates its share)."""
        broadcast_buffers(net, context)
        totals = accumulate(net, loader, context.device).reduce(context)
        return {"val_accuracy": totals.accuracy, "val_flops_ratio": totals.flops_ratio}


class Detection:
    """The detector's losses plus ``background_weight`` × the background its spatial gates
    kept, FPN-feature distillation over ``region`` (``image`` or ``objects``,
    :data:`DISTILL_REGIONS`), COCO AP of boxes."""

    score = "AP"

    def __init__(self, region: str = "image", background_weight: float = 0.0) -> None:
        self.region = checks.choice("distillation region", region, DISTILL_REGIONS)
        self.background_weight = checks.number("background weight", background_weight, 0.0)

    def loaders(self, train, test, batch_size, seed, context, workers):
        loader = train_loader(train, batch_size, seed=seed, rank=context.rank, world_size=context.world_size,
                              workers=workers, collate_fn=collate_detection)
        return loader, DataLoader(test, batch_size=batch_size, collate_fn=collate_detection)

    def losses(self, model, net, teacher, inputs, targets):
        """``(sum of the detector's losses + β × background, feature distillation, each loss
        and the background)``: the background is the share of the patches off object
        boxes that the gates kept; distillation is the mean squared difference of the FPN
        levels over the images' area (not the padding, which the student's gates skip) or
        its cells on object boxes, the teacher's backbone run on the very batch (resized,
        normalised, padded) the student's backbone saw."""
        keep = ("boxes", "labels", "masks") if getattr(net.roi_heads, "has_mask", lambda: False)() else \
            ("boxes", "labels")
        targets = [{k: v for k, v in t.items() if k in keep} for t in targets]
        seen: dict = {}
        hook = net.backbone.register_forward_hook(lambda m, args, output: seen.update(input=args[0], output=output))
        try:
            with transformed_batches(net) as transformed:
                losses = model(inputs, targets)
        finally:
            hook.remove()
        loss = sum(losses.values())
        sizes, boxes = transformed[-1]
        input_size = tuple(seen["input"].shape[-2:])
        image = image_pixels(sizes, input_size, loss.device)
        objects = object_pixels(boxes, input_size, loss.device)
        if self.background_weight > 0:
            background = background_loss(net, image, objects)
            loss = loss + self.background_weight * background
            losses = {**losses, "background": background}
        kd = loss.new_zeros(())
        if teacher is not None:
            with torch.no_grad():
                taught = teacher.backbone(seen["input"])
            region = objects if self.region == "objects" else image
            kd = torch.stack([feature_mse(seen["output"][k].float(), taught[k].float(), region)
                              for k in taught]).mean()
        return loss, kd, losses

    def validate(self, net, loader, context):
        """COCO AP of boxes and the backbone's mean FLOPs ratio, computed on rank 0 (COCOeval
        needs every image) and shared with the other ranks."""
        broadcast_buffers(net, context)
        values = torch.zeros(2, dtype=torch.float64, device=context.device)
        if context.is_main:
            result = evaluate_detector(net.eval(), loader.dataset, loader.batch_size)
            totals = result.get("totals")
            values += torch.tensor([result["bbox"]["AP"], totals.flops_ratio if totals else 1.0],
                                   dtype=torch.float64, device=context.device)
        values = all_reduce_sum(values, context).tolist()
        return {"val_AP": values[0], "val_flops_ratio": values[1]}


def feature_mse(student: Tensor, teacher: Tensor, region: Tensor) -> Tensor:
    """Mean squared difference of two ``(B, C, h, w)`` feature maps over the positions whose
    cell of the input holds a pixel of ``region`` (``(B, 1, H, W)``,
    :mod:`laudnet.detection.regions`: the images' unpadded area, or their object boxes);
    0 when there is none."""
    inside = cells(region, *student.shape[-2:])
    squared = (student - teacher).pow(2).mean(dim=1)
    return (squared * inside).sum() / inside.sum().clamp(min=1)


def task_of(kind: str, temperature: float = 4.0, region: str = "image", background_weight: float = 0.0) -> Task:
    """The task of a dataset kind (``DataInfo.task``) with its loss settings: the logits'
    ``temperature`` (classification), the features' ``region`` and the background weight
    (detection)."""
    if kind == "detection":
        return Detection(region, background_weight)
    if region != "image":
        raise ValueError(f"distillation region {region!r} needs a detection dataset; classification distils "
                         "the logits of the whole image")
    if background_weight != 0:
        raise ValueError(f"background weight {background_weight:g} needs a detection dataset, whose object "
                         "boxes say what is background; classification has none (give 0)")
    return Classification(temperature)


def to_device(inputs, targets, device: torch.device):
    """A batch on ``device``: tensors moved, detection lists of images and target dicts too."""
    if isinstance(inputs, Tensor):
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    inputs = [image.to(device, non_blocking=True) for image in inputs]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
               for t in targets]
    return inputs, targets
