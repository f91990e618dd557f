"""Plots of evaluations: accuracy (or a detector's AP) against FLOPs and per-block
activation rates (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(result: dict) -> str:
    """A short name of an evaluated run: ``static`` or its paradigm and target."""
    if result.get("static_run"):
        return "static"
    paradigm = result["paradigm"]
    words = paradigm.split("-")
    name = words[0] if len(set(words)) == 1 else paradigm
    return f"{name} @ {result['target']:.0%}" if result.get("target") else name


def score(result: dict) -> tuple[str, float]:
    """The headline figure of an evaluation, in percent: top-1 accuracy, or a detector's box AP."""
    if result.get("task") == "detection":
        return "box AP", 100 * result["AP"]
    return "top-1 %", 100 * result["accuracy"]


def accuracy_vs_flops(results: Sequence[dict], path: str | Path) -> Path:
    """Top-1 accuracy (box AP for detectors) against MMACs per image, one point per evaluation."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for result in results:
        x, y = result["flops"] / 1e6, score(result)[1]
        marker = "s" if result.get("static_run") else "o"
        ax.scatter([x], [y], s=60, marker=marker, zorder=3)
        ax.annotate(label(result), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("MMACs per image (what sparse execution runs)")
    name = score(results[0])[0] if results else "top-1 %"
    ax.set_ylabel(name if name != "top-1 %" else "top-1 accuracy (%)")
    ax.set_title(f"{'Box AP' if name == 'box AP' else 'Accuracy'} against FLOPs")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def block_rates(results: Sequence[dict], path: str | Path) -> Path:
    """Mean activation rate of each dynamic block, one group of bars per block."""
    dynamic = [r for r in results if not r.get("static_run")]
    names = [b["name"] for b in dynamic[0]["blocks"]] if dynamic else []
    fig, ax = plt.subplots(figsize=(max(5.5, 0.55 * len(names) * max(1, len(dynamic))), 3.6))
    width = 0.8 / max(1, len(dynamic))
    for i, result in enumerate(dynamic):
        rates = {b["name"]: b["rate"] for b in result["blocks"]}
        positions = [j + (i - (len(dynamic) - 1) / 2) * width for j in range(len(names))]
        ax.bar(positions, [rates.get(n, 0.0) for n in names], width=width, label=label(result))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("activation rate")
    ax.set_title("Per-block activation rate (test mean)")
    if dynamic:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
