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
import datetime
import itertools
import json
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import checks
from .checkpoint import RunSpec, load_checkpoint, model_from_checkpoint
from .data.build import has_boxes
from .data.loaders import eval_loader
from .detection.detectors import max_size
from .detection.metrics import evaluate_detector
from .dynamic import dynamic_blocks, dynamic_networks, set_execution
from .measure import interleaved, ratio
from .measure.bench import machine_description
from .latency.predictor import predict_walk, walk_network
from .metrics import Totals, accumulate
from .outputs import claim
from .train.loop import TrainConfig

EVAL_EXECUTIONS = ("sparse", "masked")


def measure_latency(model: nn.Module, images: Tensor | list[Tensor], repeats: int = 20, warmup: int = 3) -> dict:
    """Sparse execution of ``model`` against its dense baseline (same weights, ``static``
    execution) on ``images`` (a batch, or a detector's list of images), interleaved; the
    speedup is dense / sparse time per round."""
    sparse = set_execution(copy.deepcopy(model).eval(), "sparse")
    dense = set_execution(copy.deepcopy(model).eval(), "static")
    device = next(model.parameters()).device
    images = images.to(device) if isinstance(images, Tensor) else [image.to(device) for image in images]

    def run(net: nn.Module):
        with torch.no_grad():
            return net(images)

    timings = interleaved({"dense": lambda: run(dense), "sparse": lambda: run(sparse)}, repeats=repeats,
                          warmup=warmup, device=device)
    speedup = ratio(timings, "dense", "sparse")
    return {"batch": len(images), "dense_ms": timings["dense"].median_ms,
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
    result = {"task": "classification", "execution": "static" if static else execution,
              "accuracy": totals.accuracy, **_compute(model, totals), "latency": [], "predicted": []}
    if not static:
        input_size = dataset[0][0].shape[-1]
        result["predicted"] = predict(model, totals.mean_rates, input_size, hardware, latency_batches)
        for batch in latency_batches:
            images = torch.stack([dataset[i][0] for i in range(min(batch, len(dataset)))])
            result["latency"].append(measure_latency(model, images, repeats))
        set_execution(model, "masked")
    return result


def _compute(model: nn.Module, totals: Totals) -> dict:
    """What the network computed over an evaluation: FLOPs, per-block rates and MACs, and
    where the spatial masks fell."""
    return {
        "test_samples": int(totals.samples),
        "flops": totals.flops / totals.samples,
        "static_flops": totals.static_flops,
        "flops_ratio": totals.flops_ratio,
        "blocks": [{"name": name, "paradigm": block.config.paradigm, "granularity": block.config.granularity,
                    "rate": totals.mean_rates[name], "macs": totals.macs[name] / totals.samples,
                    "static_macs": block.last.static_macs, "kept_on_object": totals.object_share(name),
                    "chance": totals.chance_share(name)} for name, block in dynamic_blocks(model)],
        "object": None if totals.object_share() is None else
        {"kept_on_object": totals.object_share(), "chance": totals.chance_share()},
    }


def evaluate_detection(model: nn.Module, dataset: Dataset, *, execution: str = "sparse",
                       latency_batches: Sequence[int] = (1, 2), latency_sizes: Sequence[int] = (),
                       repeats: int = 20, device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """COCO mAP, activation rates, backbone FLOPs, where the spatial masks fall (kept
    patches inside the object boxes) and the measured sparse-vs-dense latency of a detector
    with a dynamic backbone on ``dataset``, as a JSON-ready dict.

    Latency is measured for the backbone body alone (on the batch the detector's transform
    makes) and for the whole detector, with the first ``batch`` test images of each of
    ``latency_batches``, resized to each short side of ``latency_sizes`` (default: the
    detector's own ``min_size``).
    """
    if execution not in EVAL_EXECUTIONS:
        raise ValueError(f"evaluation execution {execution!r} is unknown; allowed: {', '.join(EVAL_EXECUTIONS)}")
    batches = [checks.positive_int("latency batch size", b) for b in latency_batches]
    sizes = [checks.integer("latency image size", s, 32) for s in latency_sizes] or [min(model.transform.min_size)]
    model = model.to(device).eval()
    static = all(block.execution == "static" for _, block in dynamic_blocks(model))
    if not static:
        set_execution(model, execution)
    metrics = evaluate_detector(model, dataset, progress=progress)
    result = {"task": "detection", "execution": "static" if static else execution, "AP": metrics["bbox"]["AP"],
              "coco": {k: v for k, v in metrics.items() if k != "totals"}, **_compute(model, metrics["totals"]),
              "latency": [], "predicted": []}
    if not static:
        for size, batch in itertools.product(sizes, batches):
            images = [dataset[i][0] for i in range(min(batch, len(dataset)))]
            result["latency"] += detector_latency(model, images, size, repeats)
        set_execution(model, "masked")
    return result


def detector_latency(detector: nn.Module, images: list[Tensor], size: int, repeats: int = 20) -> list[dict]:
    """Sparse against dense latency of ``detector``'s backbone body and of the whole
    detector on ``images`` resized to the short side ``size`` (:func:`measure_latency`)."""
    resized = copy.deepcopy(detector).eval()
    resized.transform.min_size, resized.transform.max_size = (size,), max_size(size)
    with torch.no_grad():
        batch = resized.transform([image.to(next(detector.parameters()).device) for image in images])[0].tensors
    shape = "x".join(str(n) for n in batch.shape)
    return [{"part": "backbone", "size": size, "input": shape, **measure_latency(resized.backbone.body, batch, repeats)},
            {"part": "detector", "size": size, "input": shape, **measure_latency(resized, images, repeats)}]


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
    network = dynamic_networks(model)[0]  # a classifier, or a detector's backbone body
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # unset: the task's defaults
    if splits.info.task == "detection":
        if kwargs.pop("hardware", None):
            raise ValueError("predicted latency on hardware profiles covers classifiers; for a detector, "
                             "predict its backbone with laudnet.predict_latency")
        kwargs.pop("batch_size", None)
        figures = evaluate_detection(model, splits.test, **kwargs)
    else:
        kwargs.pop("latency_sizes", None)
        figures = evaluate(model, splits.test, **kwargs)
    result = {"checkpoint": state["path"], "model": spec.model, "paradigm": network.paradigm,
              "granularity": network.granularity, "dataset": eval_spec.dataset, "static_run": state["config"]["static"],
              "target": None if state["config"]["static"] else state["config"]["target"],
              "epochs": state["epoch"], "trained_with": training_settings(state["config"]),
              "evaluated": {"date": datetime.date.today().isoformat(), "machine": machine_description()}, **figures}
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "eval.md").write_text(summary_markdown(result))
    result["json"] = str(out_dir / "eval.json")
    return result


def training_settings(config: dict) -> dict:
    """The settings of a run that differ from ``laudnet train``'s defaults (what makes it
    this run), leaving out those that only change its logs."""
    quiet = ("log_every", "tensorboard", "progress_bar")
    return {f.name: config[f.name] for f in fields(TrainConfig)
            if f.name in config and f.name not in quiet and config[f.name] != f.default}


def summary_markdown(result: dict) -> str:
    """A short markdown summary of one evaluation."""
    lines = [f"# Evaluation of `{result.get('checkpoint', 'model')}`", ""]
    if "model" in result:
        kind = "static (no gates)" if result["static_run"] else f"{result['paradigm']} (granularity {result['granularity']})"
        lines += [f"- model: {result['model']}, {kind}", f"- dataset: {result['dataset']} test split, "
                  f"{result['test_samples']} images"]
    if "trained_with" in result:
        settings = ", ".join(f"{name} {value}" for name, value in result["trained_with"].items())
        lines.append(f"- trained with (the settings that differ from `laudnet train`'s defaults): {settings or 'none'}")
    if "evaluated" in result:
        lines.append(f"- evaluated on {result['evaluated']['date']}, {result['evaluated']['machine']}")
    detection = result.get("task") == "detection"
    if detection:
        for iou_type, metrics in result["coco"].items():
            figures = ", ".join(f"{name} {100 * value:.1f}" for name, value in metrics.items())
            lines.append(f"- COCO {iou_type}: {figures} ({result['execution']} execution)")
    else:
        lines.append(f"- top-1 accuracy: {100 * result['accuracy']:.2f} % ({result['execution']} execution)")
    lines.append(f"- {'backbone ' if detection else ''}FLOPs: {result['flops'] / 1e6:.2f} MMACs per image of "
                 f"{result['static_flops'] / 1e6:.2f} static ({100 * result['flops_ratio']:.1f} %)")
    if result["object"] is not None:
        lines.append(f"- kept patches on {'objects' if detection else 'the object'}: "
                     f"{100 * result['object']['kept_on_object']:.1f} % "
                     f"(all patches: {100 * result['object']['chance']:.1f} %)")
    overlap = result["object"] is not None
    lines += ["", "| block | paradigm | granularity | activation rate | MMACs | static MMACs |"
              + " kept on objects | all patches on objects |" * overlap,
              "|---|---|---|---|---|---|" + "---|---|" * overlap]
    for b in result["blocks"]:
        shares = "".join(" - |" if b.get(key) is None else f" {100 * b[key]:.1f} % |"
                         for key in ("kept_on_object", "chance")) if overlap else ""
        lines.append(f"| {b['name']} | {b['paradigm']} | {b['granularity'] or '-'} | {b['rate']:.3f} | "
                     f"{b['macs'] / 1e6:.2f} | {b['static_macs'] / 1e6:.2f} |{shares}")
    if result["latency"]:
        threads = result["latency"][0]["threads"]
        lines += ["", f"Measured latency on this machine ({threads} threads), sparse against dense, interleaved:", ""]
        where = (lambda m: f"| {m['part']} | {m['input']} ") if detection else (lambda m: "")
        lines += ["| part | input " * detection + "| batch | dense ms | sparse ms | speedup (median) | IQR |",
                  "|---|---" * detection + "|---|---|---|---|---|"]
        for m in result["latency"]:
            lines.append(f"{where(m)}| {m['batch']} | {m['dense_ms']:.2f} | {m['sparse_ms']:.2f} | "
                         f"{m['speedup']:.2f}x | {m['speedup_iqr'][0]:.2f}-{m['speedup_iqr'][1]:.2f} |")
    if result.get("predicted"):
        lines += ["", "Predicted latency at the measured activation rates, against the network without gates:", "",
                  "| hardware | batch | static ms | dynamic ms | speedup | |", "|---|---|---|---|---|---|"]
        for p in result["predicted"]:
            status = "calibrated here" if p["calibrated"] else "uncalibrated (datasheet figures)"
            lines.append(f"| {p['hardware']} | {p['batch']} | {p['static_ms']:.3f} | {p['dynamic_ms']:.3f} | "
                         f"{p['speedup']:.2f}x | {status} |")
    lines.append("")
    return "\n".join(lines)
