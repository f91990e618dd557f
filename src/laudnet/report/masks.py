"""Where a dynamic network computes: its decisions on example images (PNG).

:func:`mask_overlays` draws, for each example, the share of each stage's spatial blocks
that compute every pixel over the image (red: computed by every block of the stage,
clear: skipped by all), with the object's box when the dataset knows it;
:func:`detection_overlays` does the same for a detector's backbone, with the ground-truth
boxes and the detections. :func:`decision_map` shows every paradigm's per-block
activation rate per example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from ..detection import DETECTORS  # noqa: E402
from ..detection.detectors import transformed_batches  # noqa: E402
from ..dynamic import dynamic_blocks, dynamic_networks, stats  # noqa: E402
from ..sparse import upsample_mask  # noqa: E402


@torch.no_grad()
def spatial_maps(model: nn.Module) -> dict[str, Tensor]:
    """Per stage, the mean over its spatial blocks of the last pass's masks, upsampled to
    the input image: ``(B, H, W)`` in [0, 1]. Stages are the first part of block names."""
    height, width = model.input_shape[-2:]
    sums: dict[str, list[Tensor]] = {}
    for name, block in dynamic_blocks(model):
        mask = None if block.last_decision is None else block.last_decision.kept_patches
        if mask is None:
            continue
        stride, side = block.spatial_masker.stride, block.spatial_masker.granularity
        h_in, w_in = block.last.input_shape[-2:]
        h_out, w_out = -(-h_in // stride), -(-w_in // stride)
        full = upsample_mask((mask > 0).float(), side, h_out, w_out)
        full = F.interpolate(full[:, None], size=(height, width), mode="nearest")[:, 0]
        sums.setdefault(name.split(".")[0], []).append(full)
    return {stage: torch.stack(maps).mean(0) for stage, maps in sums.items()}


@torch.no_grad()
def _run(model: nn.Module, dataset, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    images = torch.stack([dataset[i][0] for i in indices])
    labels = torch.tensor([int(dataset[i][1]) for i in indices])
    device = next(model.parameters()).device
    predictions = model.eval()(images.to(device)).argmax(1).cpu()
    return images, labels, predictions


def _image(ax, image: Tensor) -> None:
    picture = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    picture = (picture - picture.min()) / (picture.max() - picture.min()).clamp_min(1e-6)
    ax.imshow(picture.numpy(), cmap="gray" if image.shape[0] == 1 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, box, colour: str = "yellow") -> None:
    top, left, bottom, right = box
    ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                               edgecolor=colour, linewidth=1.2))


def _overlay(ax, image: Tensor, computed: Tensor) -> None:
    """``image`` with the share of blocks that compute each pixel in red."""
    _image(ax, image)
    overlay = torch.zeros(*computed.shape[-2:], 4)
    overlay[..., 0] = 1.0
    overlay[..., 3] = 0.55 * computed.cpu()
    ax.imshow(overlay.numpy(), interpolation="nearest")


def mask_overlays(model: nn.Module, dataset, indices: Sequence[int], classes: Sequence[str],
                  path: str | Path) -> Path | None:
    """Examples (rows) × [image, one overlay per spatial stage]; ``None`` if the model has
    no spatial gate."""
    images, labels, predictions = _run(model, dataset, indices)
    maps = spatial_maps(model)
    if not maps:
        return None
    ratios = (stats(model).flops_per_sample / stats(model).static_flops).cpu()
    stages = list(maps)
    fig, axes = plt.subplots(len(indices), 1 + len(stages), figsize=(1.9 * (1 + len(stages)), 1.9 * len(indices)),
                             squeeze=False)
    boxes = getattr(dataset, "box", None)
    for row, index in enumerate(indices):
        _image(axes[row, 0], images[row])
        ok = "" if predictions[row] == labels[row] else " ✗"
        axes[row, 0].set_title(f"{classes[labels[row]]} → {classes[predictions[row]]}{ok}", fontsize=7)
        axes[row, 0].set_ylabel(f"FLOPs {ratios[row]:.0%}", fontsize=7)
        for col, stage in enumerate(stages, start=1):
            ax = axes[row, col]
            _overlay(ax, images[row], maps[stage][row])
            if boxes is not None:
                _box(ax, boxes(index))
            if row == 0:
                ax.set_title(f"{stage}: computed", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def _detect(detector: nn.Module, image: Tensor) -> tuple[dict, dict[str, Tensor]]:
    """A detector's output for one image and, per stage, where its backbone computed,
    cropped to the resized image (the transform pads it) and scaled back to ``image``."""
    with transformed_batches(detector) as batches:
        output = detector.eval()([image.to(next(detector.parameters()).device)])[0]
    height, width = batches[0].sizes[0]
    maps = {stage: F.interpolate(m[:, None, :height, :width], size=image.shape[-2:], mode="nearest")[0, 0]
            for stage, m in spatial_maps(dynamic_networks(detector)[0]).items()}
    return output, maps


def detection_overlays(detector: nn.Module, dataset, indices: Sequence[int], classes: Sequence[str],
                       path: str | Path, score_threshold: float = 0.5) -> Path | None:
    """Examples (rows) × [image with the detections, one overlay per spatial stage of the
    backbone]: ground-truth boxes in yellow, detections scoring at least
    ``score_threshold`` in cyan with their class; ``None`` if the backbone has no spatial
    gate."""
    examples = [(dataset[i], *_detect(detector, dataset[i][0])) for i in indices]
    stages = list(examples[0][2]) if examples else []
    if not stages:
        return None
    fig, axes = plt.subplots(len(indices), 1 + len(stages), figsize=(2.4 * (1 + len(stages)), 2.4 * len(indices)),
                             squeeze=False)
    for row, ((image, target), output, maps) in enumerate(examples):
        kept = output["scores"] >= score_threshold
        for col in range(1 + len(stages)):
            ax = axes[row, col]
            if col == 0:
                _image(ax, image)
                ax.set_title(f"{int(kept.sum())} detections, {len(target['boxes'])} objects", fontsize=7)
            else:
                _overlay(ax, image, maps[stages[col - 1]])
                if row == 0:
                    ax.set_title(f"{stages[col - 1]}: computed", fontsize=7)
            for x1, y1, x2, y2 in target["boxes"].tolist():
                _box(ax, (y1, x1, y2, x2))
            for (x1, y1, x2, y2), label in zip(output["boxes"][kept].tolist(), output["labels"][kept].tolist()):
                _box(ax, (y1, x1, y2, x2), "cyan")
                if col == 0:
                    ax.text(x1, y1, classes[label - 1], color="cyan", fontsize=6, va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _example_rates(model: nn.Module, dataset, indices: Sequence[int]) -> tuple[list[str], Tensor]:
    """Block names and the activation rate of each block on each example ``(N, blocks)``;
    a detector runs one image at a time (its images differ in size)."""
    if isinstance(model, DETECTORS):
        rates = []
        for i in indices:
            _detect(model, dataset[i][0])
            rates.append(torch.stack([b.rate.float().cpu()[0] for b in stats(model).blocks]))
        return [b.name for b in stats(model).blocks], torch.stack(rates)
    _run(model, dataset, indices)
    s = stats(model)
    return [b.name for b in s.blocks], torch.stack([b.rate.float().cpu() for b in s.blocks], dim=1)


def decision_map(model: nn.Module, dataset, indices: Sequence[int], path: str | Path) -> Path:
    """Per example (rows) and dynamic block (columns): the activation rate of the block."""
    names, rates = _example_rates(model, dataset, indices)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * rates.shape[1] + 1.5), 0.3 * rates.shape[0] + 1.6))
    shown = ax.imshow(rates.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(rates.shape[1]), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(indices)), [f"#{i}" for i in indices], fontsize=7)
    ax.set_title("Activation rate per example and block", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
