"""Reports: evaluations gathered in one self-contained HTML page with plots and mask overlays.

``write_report`` reads ``eval.json`` files (from ``laudnet eval``), plots accuracy against
FLOPs and per-block activation rates, reloads each dynamic model from its checkpoint to draw
its decisions on example test images, and writes ``report.html`` (images embedded, PNGs
kept beside it).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Sequence

from ..checkpoint import RunSpec, load_checkpoint, model_from_checkpoint
from ..outputs import claim
from .masks import decision_map, detection_overlays, mask_overlays
from .plots import accuracy_vs_flops, block_rates, label, score

__all__ = ["accuracy_vs_flops", "block_rates", "decision_map", "detection_overlays", "load_eval", "mask_overlays",
           "write_report"]


def load_eval(source: str | Path | dict) -> dict:
    """An evaluation: a dict, an ``eval.json`` or a directory holding one."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; create it with `laudnet eval CKPT`")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(result, dict) or not ("accuracy" in result or "AP" in result) or "blocks" not in result:
        raise ValueError(f"{path} is not an evaluation written by `laudnet eval`")
    return result


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _speedups(result: dict) -> str:
    return ", ".join(f"{m['part'] + ' ' if 'part' in m else ''}b{m['batch']}: {m['speedup']:.2f}x"
                     for m in result["latency"]) or "-"


def _figures_of(result: dict, index: int, out_dir: Path, examples: int) -> list[str]:
    """Mask overlays and the decision map of one dynamic run, as HTML figures."""
    state = load_checkpoint(result["checkpoint"])
    spec = RunSpec(**{**state["spec"], "dataset": result["dataset"], "test_size": max(1, examples)})
    splits = spec.datasets()
    model = model_from_checkpoint(state, splits)
    indices = list(range(min(examples, len(splits.test))))
    figures = []
    if splits.info.task == "detection":
        overlay = detection_overlays(model, splits.test, indices, splits.info.classes, out_dir / f"masks_{index}.png")
        caption = "where the backbone's spatial gates compute (red), objects in yellow, detections in cyan"
    else:
        overlay = mask_overlays(model, splits.test, indices, splits.info.classes, out_dir / f"masks_{index}.png")
        caption = "where the spatial gates compute (red), object box in yellow"
    if overlay is not None:
        figures.append(_img(overlay, f"{label(result)}: {caption}"))
    decisions = decision_map(model, splits.test, indices, out_dir / f"decisions_{index}.png")
    figures.append(_img(decisions, f"{label(result)}: activation rate per example and block"))
    return figures


def write_report(evals: Sequence[str | Path | dict], out_dir: str | Path, *, examples: int = 8,
                 title: str = "laudnet report") -> Path:
    """Write ``out_dir/report.html`` for the evaluations ``evals``; return its path."""
    if not evals:
        raise ValueError("a report needs at least one evaluation")
    if examples < 0:
        raise ValueError(f"number of examples must be non-negative, got {examples}")
    with claim(out_dir):
        return _write(results=[load_eval(e) for e in evals], out_dir=Path(out_dir), examples=examples, title=title)


def _write(results: list[dict], out_dir: Path, examples: int, title: str) -> Path:
    """The page and its figures for ``results`` in the claimed ``out_dir``."""
    summary = _table(
        ["run", "model", "dataset", " / ".join(sorted({score(r)[0] for r in results})), "MMACs", "FLOPs ratio",
         "kept patches on objects", "measured speedup (sparse vs dense)"],
        [[label(r), r.get("model", "-"), r.get("dataset", "-"), f"{score(r)[1]:.2f}",
          f"{r['flops'] / 1e6:.2f}", f"{r['flops_ratio']:.1%}",
          "-" if not r.get("object") else f"{r['object']['kept_on_object']:.1%} (all patches {r['object']['chance']:.1%})",
          _speedups(r)] for r in results])
    body = [f"<h1>{html.escape(title)}</h1>", summary,
            _img(accuracy_vs_flops(results, out_dir / "accuracy_vs_flops.png"), "Accuracy against FLOPs")]
    if any(not r.get("static_run") for r in results):
        body.append(_img(block_rates(results, out_dir / "block_rates.png"), "Per-block activation rate"))
    for index, result in enumerate(results):
        body.append(f"<h2>{html.escape(label(result))} — {html.escape(result.get('checkpoint', ''))}</h2>")
        kind = ("static network (no gates)" if result.get("static_run") else
                f"paradigm {result.get('paradigm')}, granularity {result.get('granularity')}")
        body.append(f"<p>{html.escape(kind)}; {result['test_samples']} test images, {score(result)[0]} in "
                    f"{html.escape(result['execution'])} execution.</p>")
        body.append(_table(["block", "paradigm", "granularity", "activation rate", "MMACs", "static MMACs"],
                           [[b["name"], b["paradigm"], b["granularity"] or "-", f"{b['rate']:.3f}",
                             f"{b['macs'] / 1e6:.2f}", f"{b['static_macs'] / 1e6:.2f}"] for b in result["blocks"]]))
        if result["latency"]:
            body.append(f"<p>Latency measured on this machine ({result['latency'][0]['threads']} threads), "
                        "sparse and dense interleaved; speedup = median of per-round dense/sparse ratios.</p>")
            body.append(_table(["part", "input", "batch", "dense ms", "sparse ms", "speedup", "IQR"],
                               [[m.get("part", "network"), m.get("input", "-"), m["batch"], f"{m['dense_ms']:.2f}", f"{m['sparse_ms']:.2f}", f"{m['speedup']:.2f}x",
                                 f"{m['speedup_iqr'][0]:.2f}–{m['speedup_iqr'][1]:.2f}"] for m in result["latency"]]))
        if not result.get("static_run") and examples > 0 and result.get("checkpoint"):
            body.extend(_figures_of(result, index, out_dir, examples))
    body.append("<p><small>FLOPs are multiply-accumulates that sparse execution runs (gates and halos included). "
                "Predicted latency on hardware profiles is not part of this report yet.</small></p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}"
             "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:13px}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    path = out_dir / "report.html"
    path.write_text(page)
    return path
