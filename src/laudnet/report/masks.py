"""Where a dynamic network computes: its decisions on example images (PNG).

:func:`mask_overlays` draws, for each example, the share of each stage's spatial blocks
that compute every pixel over the image (red: computed by every block of the stage,
clear: skipped by all), with the object's box when the dataset knows it.
:func:`decision_map` shows every paradigm's per-block activation rate per example.
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

from ..dynamic import dynamic_blocks, stats  # noqa: E402
from ..sparse import upsample_mask  # noqa: E402


@torch.no_grad()
def spatial_maps(model: nn.Module) -> dict[str, Tensor]:
    """Per stage, the mean over its spatial blocks of the last pass's masks, upsampled to
    the input image: ``(B, H, W)`` in [0, 1]. Stages are the first part of block names."""
    height, width = model.input_shape[-2:]
    sums: dict[str, list[Tensor]] = {}
    for name, block in dynamic_blocks(model):
        decision = block.last_decision
        if decision is None or decision.spatial is None:
            continue
        mask = decision.spatial if decision.layer is None else decision.spatial * decision.layer[:, None, None]
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


def _box(ax, box) -> None:
    top, left, bottom, right = box
    ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                               edgecolor="yellow", linewidth=1.2))


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
            _image(ax, images[row])
            overlay = torch.zeros(*maps[stage].shape[-2:], 4)
            overlay[..., 0] = 1.0
            overlay[..., 3] = 0.55 * maps[stage][row].cpu()
            ax.imshow(overlay.numpy(), interpolation="nearest")
            if boxes is not None:
                _box(ax, boxes(index))
            if row == 0:
                ax.set_title(f"{stage}: computed", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def decision_map(model: nn.Module, dataset, indices: Sequence[int], path: str | Path) -> Path:
    """Per example (rows) and dynamic block (columns): the activation rate of the block."""
    _run(model, dataset, indices)
    s = stats(model)
    rates = torch.stack([b.rate.float().cpu() for b in s.blocks], dim=1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * rates.shape[1] + 1.5), 0.3 * rates.shape[0] + 1.6))
    shown = ax.imshow(rates.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(rates.shape[1]), [b.name for b in s.blocks], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(indices)), [f"#{i}" for i in indices], fontsize=7)
    ax.set_title("Activation rate per example and block", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
