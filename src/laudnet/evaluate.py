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
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .checkpoint import RunSpec, load_checkpoint, model_from_checkpoint
from .data.build import has_boxes
from .data.loaders import eval_loader
from .dynamic import dynamic_blocks, set_execution
from .measure import interleaved, ratio
from .latency.predictor import predict_walk, walk_network
from .metrics import accumulate
from .outputs import claim

EVAL_EXECUTIONS = ("sparse", "masked")


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
