"""Evaluation of a trained network: accuracy, per-block activation rates, dynamic and static
FLOPs, where the spatial masks fall, and the measured latency of sparse against dense
execution on this machine, and its predicted latency on chosen hardware profiles.

Measured latency: the dense baseline (the same weights in ``static`` execution) and the
sparse network run interleaved on the same test images (:func:`laudnet.latency.interleaved`),
and the speedup is the median of the per-round ratios with its interquartile range.
Predicted latency (:func:`laudnet.predict_latency`) prices the network at the activation
rates measured on the test split against the same network without gates.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .dynamic import dynamic_blocks, set_execution, stats
from .measure import interleaved, ratio
from .latency.predictor import predict_walk, walk_network
from .outputs import claim
from .train.data import eval_loader, has_boxes
from .train.distributed import Context, all_reduce_sum
from .train.loop import RunSpec, load_checkpoint, model_from_checkpoint

EVAL_EXECUTIONS = ("sparse", "masked")


@dataclass
class Totals:
    """Sums over evaluated samples; the figures are ratios of them, so ranks add up."""

    samples: float = 0.0
    correct: float = 0.0
    flops: float = 0.0
    static_flops: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    macs: dict[str, float] = field(default_factory=dict)
    kept_on_object: float = 0.0
    kept: float = 0.0
    patches_on_object: float = 0.0
    patches: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.samples, 1)

    @property
    def flops_ratio(self) -> float:
        return self.flops / max(self.samples, 1) / self.static_flops

    @property
    def mean_rates(self) -> dict[str, float]:
        return {name: total / max(self.samples, 1) for name, total in self.rates.items()}

    @property
    def object_share(self) -> float | None:
        """Share of the kept patches (of every spatial block) that overlap the object box."""
        return self.kept_on_object / self.kept if self.kept else None

    @property
    def chance_share(self) -> float | None:
        """Share of all patches that overlap the object box: what random masks would give."""
        return self.patches_on_object / self.patches if self.patches else None

    def reduce(self, context: Context) -> "Totals":
        """The totals summed over the ranks."""
        if not context.distributed:
            return self
        names = list(self.rates)
        values = torch.tensor([self.samples, self.correct, self.flops, self.kept_on_object, self.kept,
                               self.patches_on_object, self.patches] + [self.rates[n] for n in names]
                              + [self.macs[n] for n in names], dtype=torch.float64)
        values = all_reduce_sum(values.to(context.device), context).cpu().tolist()
        k = len(names)
        return Totals(*values[:3], self.static_flops, dict(zip(names, values[7:7 + k])),
                      dict(zip(names, values[7 + k:])), *values[3:7])


def object_overlap(model: nn.Module, boxes: Tensor) -> tuple[float, float, float, float]:
    """For the spatial decisions of the last forward pass and the object boxes ``(B, 4)``
    (top, left, bottom, right in input pixels): kept patches on the object, kept patches,
    patches on the object, patches. A patch is on the object when its area in the input
    image (patch side × the block's downsampling) overlaps the box."""
    image_height, image_width = model.input_shape[-2:]
    totals = torch.zeros(4, dtype=torch.float64)
    boxes = boxes.to(torch.float64)
    for _, block in dynamic_blocks(model):
        decision = block.last_decision
        if decision is None or decision.spatial is None:
            continue
        mask = decision.spatial if decision.layer is None else decision.spatial * decision.layer[:, None, None]
        rows, cols = mask.shape[-2:]
        stride, side = block.spatial_masker.stride, block.spatial_masker.granularity
        height, width = block.last.input_shape[-2:]
        cell_h = side * image_height / math.ceil(height / stride)
        cell_w = side * image_width / math.ceil(width / stride)
        r = torch.arange(rows, dtype=torch.float64)
        c = torch.arange(cols, dtype=torch.float64)
        row_hit = (r * cell_h < boxes[:, 2:3]) & ((r + 1) * cell_h > boxes[:, 0:1])
        col_hit = (c * cell_w < boxes[:, 3:4]) & ((c + 1) * cell_w > boxes[:, 1:2])
        on = (row_hit[:, :, None] & col_hit[:, None, :]).to(torch.float64)
        kept = (mask.detach().cpu() > 0).to(torch.float64)
        totals += torch.stack([(kept * on).sum(), kept.sum(), on.sum(), torch.tensor(float(on.numel()))])
    return tuple(totals.tolist())


@torch.no_grad()
def accumulate(model: nn.Module, loader, device: torch.device | str = "cpu",
               boxes: Tensor | None = None, progress: bool = False) -> Totals:
    """Run ``model`` in eval mode (its current execution) over ``loader`` and sum what the
    figures need. ``boxes`` ``(N, 4)``, aligned with the loader's order, enables the
    object-overlap counts; ``progress`` shows a progress bar."""
    model.eval()
    totals = Totals()
    seen = 0
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="evaluating", leave=False, dynamic_ncols=True)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        batch = labels.shape[0]
        s = stats(model)
        totals.samples += batch
        totals.correct += float((logits.argmax(1) == labels).sum())
        totals.flops += float(s.flops_per_sample.sum())
        totals.static_flops = s.static_flops
        for b in s.blocks:
            totals.rates[b.name] = totals.rates.get(b.name, 0.0) + float(b.rate.sum())
            totals.macs[b.name] = totals.macs.get(b.name, 0.0) + float(b.macs.sum())
        if boxes is not None:
            counts = object_overlap(model, boxes[seen:seen + batch])
            totals.kept_on_object += counts[0]
            totals.kept += counts[1]
            totals.patches_on_object += counts[2]
            totals.patches += counts[3]
        seen += batch
    return totals


def measure_latency(model: nn.Module, images: Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """Sparse execution of ``model`` against its dense baseline (same weights, ``static``
    execution) on ``images``, interleaved; the speedup is dense / sparse time per round."""
    sparse = set_execution(copy.deepcopy(model).eval(), "sparse")
    dense = set_execution(copy.deepcopy(model).eval(), "static")
    device = next(model.parameters()).device
    images = images.to(device)

    def run(net: nn.Module):
        with torch.no_grad():
            return net(images)

    timings = interleaved({"dense": lambda: run(dense), "sparse": lambda: run(sparse)}, repeats=repeats,
                          warmup=warmup, device=device)
    speedup = ratio(timings, "dense", "sparse")
    return {"batch": images.shape[0], "dense_ms": timings["dense"].median_ms,
            "sparse_ms": timings["sparse"].median_ms, "speedup": speedup.median,
            "speedup_iqr": list(speedup.spread), "repeats": repeats, "threads": torch.get_num_threads()}


def predict(model: nn.Module, rates: dict[str, float], input_size: int, hardware: Sequence[str],
            batches: Sequence[int]) -> list[dict]:
    """Predicted latency of ``model`` at the activation ``rates`` (per block name) against
    the same network without gates, on each hardware profile and batch size."""
    if not hardware:
        return []
    walk = walk_network(model, input_size)
    rows = []
    for name in hardware:
        for batch in batches:
            static = predict_walk(walk, name, batch, execution="static")
            dynamic = predict_walk(walk, name, batch, rates)
            rows.append({"hardware": name, "title": static.title, "calibrated": static.calibrated, "batch": batch,
                         "static_ms": static.total_ms, "dynamic_ms": dynamic.total_ms,
                         "speedup": static.total_ms / dynamic.total_ms})
    return rows


def evaluate(model: nn.Module, dataset: Dataset, *, execution: str = "sparse", batch_size: int = 100,
             latency_batches: Sequence[int] = (1, 32), repeats: int = 20, hardware: Sequence[str] = (),
             device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """Accuracy, activation rates, FLOPs, object overlap (datasets with boxes) and measured
    sparse-vs-dense latency of ``model`` on ``dataset``, as a JSON-ready dict.

    ``execution`` is how accuracy is computed: ``sparse`` (the real skipping engine) or
    ``masked`` (the same function, computed densely). A model without gates in ``static``
    execution is evaluated as it is, and its latency is not measured. ``hardware`` names
    profiles to predict the latency on, at the ``latency_batches``.
    """
    if execution not in EVAL_EXECUTIONS:
        raise ValueError(f"evaluation execution {execution!r} is unknown; allowed: {', '.join(EVAL_EXECUTIONS)}")
    if any(b < 1 for b in latency_batches):
        raise ValueError(f"latency batch sizes must be positive, got {list(latency_batches)}")
    model = model.to(device).eval()
    static = all(block.execution == "static" for _, block in dynamic_blocks(model))
    if not static:
        set_execution(model, execution)
    boxes = torch.tensor([dataset.box(i) for i in range(len(dataset))]) if has_boxes(dataset) else None
    totals = accumulate(model, eval_loader(dataset, batch_size), device, boxes, progress)
    result = {
        "execution": "static" if static else execution,
        "test_samples": int(totals.samples),
        "accuracy": totals.accuracy,
        "flops": totals.flops / totals.samples,
        "static_flops": totals.static_flops,
        "flops_ratio": totals.flops_ratio,
        "blocks": [{"name": name, "paradigm": block.config.paradigm, "granularity": block.config.granularity,
                    "rate": totals.mean_rates[name], "macs": totals.macs[name] / totals.samples,
                    "static_macs": block.last.static_macs} for name, block in dynamic_blocks(model)],
        "object": None if boxes is None or totals.object_share is None else
        {"kept_on_object": totals.object_share, "chance": totals.chance_share},
        "latency": [],
        "predicted": [],
    }
    if not static:
        input_size = dataset[0][0].shape[-1]
        result["predicted"] = predict(model, totals.mean_rates, input_size, hardware, latency_batches)
        for batch in latency_batches:
            images = torch.stack([dataset[i][0] for i in range(min(batch, len(dataset)))])
            result["latency"].append(measure_latency(model, images, repeats))
        set_execution(model, "masked")
    return result


def evaluate_checkpoint(checkpoint: str | Path, *, dataset: str | None = None, data: str | None = None,
                        test_size: int | None = None, out_dir: str | Path | None = None, **kwargs) -> dict:
    """Evaluate a training checkpoint on its dataset's test split (or ``dataset`` / ``data``
    / ``test_size`` instead) and write ``eval.json`` and ``eval.md`` into ``out_dir``
    (default: the checkpoint's directory), which is claimed (:func:`laudnet.outputs.claim`)
    before the work starts. Keyword arguments go to :func:`evaluate`."""
    state = load_checkpoint(checkpoint)
    out_dir = Path(out_dir) if out_dir is not None else Path(state["path"]).parent
    with claim(out_dir):
        return _evaluate_into(state, out_dir, dataset, data, test_size, kwargs)


def _evaluate_into(state: dict, out_dir: Path, dataset: str | None, data: str | None, test_size: int | None,
                   kwargs: dict) -> dict:
    spec = RunSpec(**state["spec"])
    overrides = {k: v for k, v in (("dataset", dataset), ("data", data), ("test_size", test_size)) if v is not None}
    eval_spec = RunSpec(**{**state["spec"], **overrides})
    splits = eval_spec.datasets()
    model = model_from_checkpoint(state, splits)
    result = {"checkpoint": state["path"], "model": spec.model, "paradigm": model.paradigm,
              "granularity": model.granularity, "dataset": eval_spec.dataset, "static_run": state["config"]["static"],
              "target": None if state["config"]["static"] else state["config"]["target"],
              "epochs": state["epoch"], **evaluate(model, splits.test, **kwargs)}
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "eval.md").write_text(summary_markdown(result))
    result["json"] = str(out_dir / "eval.json")
    return result


def summary_markdown(result: dict) -> str:
    """A short markdown summary of one evaluation."""
    lines = [f"# Evaluation of `{result.get('checkpoint', 'model')}`", ""]
    if "model" in result:
        kind = "static (no gates)" if result["static_run"] else f"{result['paradigm']} (granularity {result['granularity']})"
        lines += [f"- model: {result['model']}, {kind}", f"- dataset: {result['dataset']} test split, "
                  f"{result['test_samples']} images"]
    lines += [f"- top-1 accuracy: {100 * result['accuracy']:.2f} % ({result['execution']} execution)",
              f"- FLOPs: {result['flops'] / 1e6:.2f} MMACs per image of {result['static_flops'] / 1e6:.2f} static "
              f"({100 * result['flops_ratio']:.1f} %)"]
    if result["object"] is not None:
        lines.append(f"- kept patches on the object: {100 * result['object']['kept_on_object']:.1f} % "
                     f"(all patches: {100 * result['object']['chance']:.1f} %)")
    lines += ["", "| block | paradigm | granularity | activation rate | MMACs | static MMACs |",
              "|---|---|---|---|---|---|"]
    for b in result["blocks"]:
        lines.append(f"| {b['name']} | {b['paradigm']} | {b['granularity'] or '-'} | {b['rate']:.3f} | "
                     f"{b['macs'] / 1e6:.2f} | {b['static_macs'] / 1e6:.2f} |")
    if result["latency"]:
        threads = result["latency"][0]["threads"]
        lines += ["", f"Measured latency on this machine ({threads} threads), sparse against dense, interleaved:", "",
                  "| batch | dense ms | sparse ms | speedup (median) | IQR |", "|---|---|---|---|---|"]
        for m in result["latency"]:
            lines.append(f"| {m['batch']} | {m['dense_ms']:.2f} | {m['sparse_ms']:.2f} | {m['speedup']:.2f}x | "
                         f"{m['speedup_iqr'][0]:.2f}-{m['speedup_iqr'][1]:.2f} |")
    if result.get("predicted"):
        lines += ["", "Predicted latency at the measured activation rates, against the network without gates:", "",
                  "| hardware | batch | static ms | dynamic ms | speedup | |", "|---|---|---|---|---|---|"]
        for p in result["predicted"]:
            status = "calibrated here" if p["calibrated"] else "uncalibrated (datasheet figures)"
            lines.append(f"| {p['hardware']} | {p['batch']} | {p['static_ms']:.3f} | {p['dynamic_ms']:.3f} | "
                         f"{p['speedup']:.2f}x | {status} |")
    lines.append("")
    return "\n".join(lines)
