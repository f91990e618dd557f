"""Accuracy benchmark: static CIFAR-style ResNet-20 against each paradigm on Fashion-MNIST.

Protocol (one seed; every model sees the same data order):

1. teacher: static ResNet-20, ``--teacher-epochs`` epochs from scratch (SGD, lr 0.1);
2. from the teacher, ``--finetune-epochs`` epochs of fine-tuning with one schedule for all
   (AdamW, lr 1e-3, cosine):
   - the static reference (no gates; cross-entropy + distillation from the teacher);
   - one student per paradigm (spatial, channel, layer) at a 50 % FLOPs target
     (cross-entropy + λ × budget + distillation; gates at 10× the learning rate). The
     students train at the target minus ``--target-margin`` (0.05), because the squared
     budget penalty settles a little above its target; they are judged at the target;
3. the same on ``fashion-mnist-placed`` (items at random positions on a 56×56 canvas),
   with a spatial student at a 30 % target, also reporting the share of its kept patches
   that overlap the item's box (and the share of all patches that do, for comparison).

Every model is evaluated on the full 10,000-image test split. Targets: each student within
0.5 points of the static reference's top-1 at FLOPs ratio ≤ its target. The cost of a
dynamic training step against a static one (teacher excluded) is measured with the
interleaved timer. Writes ``accuracy.csv``, ``accuracy.json`` and ``accuracy.md`` into
``--out``; finished runs are reused and interrupted ones resumed when run again.

    nice -n 19 python benchmarks/accuracy.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from laudnet.evaluate import evaluate_checkpoint
from laudnet.checkpoint import CHECKPOINT
from laudnet.data import build_datasets
from laudnet.measure import interleaved, ratio
from laudnet.train import RunSpec, TrainConfig, Trainer, load_checkpoint, resume, train

STUDENTS = {
    # dataset: [(paradigm, granularity, gate_scale, target)]
    "fashion-mnist": [("spatial", "7-7-7", False, 0.5), ("channel", "4", True, 0.5), ("layer", None, True, 0.5)],
    "fashion-mnist-placed": [("spatial", "8-7-7", False, 0.3)],
}
"""Large spatial patches: the sparse path recomputes each patch's halo, which costs more
with small patches (a 7×7 patch of a BasicBlock costs 1.33× its dense share)."""


GATE_SETTINGS = {"target", "budget_weight", "bound_warmup", "tau_schedule", "tau_start", "tau_end", "gate_lr_mult"}
"""Settings a static run does not use."""


def run(spec: RunSpec, config: TrainConfig, out_dir: Path) -> Path:
    """Train into ``out_dir``, reuse it if finished, resume it if interrupted."""
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        ignored = GATE_SETTINGS if config.static else set()
        same = all(state["config"].get(k) == v for k, v in asdict(config).items() if k not in ignored)
        if state["spec"] != asdict(spec) or not same:
            raise SystemExit(f"{out_dir} holds a run with other settings; delete it or choose another --runs")
        if state["epoch"] >= config.epochs:
            print(f"reusing {checkpoint}", flush=True)
            return checkpoint
        print(f"resuming {checkpoint}", flush=True)
        return resume(out_dir)
    print(f"training {out_dir.name}: {spec.paradigm} on {spec.dataset}", flush=True)
    return train(spec, config, out_dir)


def step_cost(spec: RunSpec, config: TrainConfig, repeats: int) -> dict:
    """Time of a dynamic training step over a static one (same backbone and optimiser,
    teacher excluded), interleaved on one batch."""
    batch = config.batch_size
    splits = build_datasets(spec.dataset, spec.data, train_size=batch, test_size=1)
    images = torch.stack([splits.train[i][0] for i in range(batch)])
    labels = torch.tensor([splits.train[i][1] for i in range(batch)])
    static = Trainer(spec.build_model(splits), replace(config, static=True), steps_per_epoch=100)
    dynamic = Trainer(spec.build_model(splits), config, steps_per_epoch=100)
    timings = interleaved({"static": lambda: static.step(images, labels),
                           "dynamic": lambda: dynamic.step(images, labels)}, repeats=repeats, warmup=2)
    cost = ratio(timings, "dynamic", "static")  # dynamic time / static time per round
    return {"dataset": spec.dataset, "paradigm": spec.paradigm, "granularity": spec.granularity, "batch": batch,
            "static_ms": timings["static"].median_ms, "dynamic_ms": timings["dynamic"].median_ms,
            "cost": cost.median, "cost_iqr": list(cost.spread), "repeats": repeats}


def markdown(rows: list[dict], costs: list[dict], settings: dict) -> str:
    lines = ["| dataset | model | FLOPs target | FLOPs ratio | top-1 % | Δ vs static (points) | target met | "
             "kept patches on object (all patches) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r["target"] is None else ("yes" if r["target_met"] else "**no**")
        on_object = "-" if r["kept_on_object"] is None else f"{r['kept_on_object']:.1%} ({r['chance']:.1%})"
        target = "-" if r["target"] is None else f"{r['target']:.0%}"
        delta = "-" if r["delta"] is None else f"{r['delta']:+.2f}"
        lines.append(f"| {r['dataset']} | {r['model']} | {target} | {r['flops_ratio']:.1%} | "
                     f"{100 * r['accuracy']:.2f} | {delta} | {met} | {on_object} |")
    lines += ["", "| dataset | paradigm | dynamic step / static step (median, IQR) | static ms | dynamic ms |",
              "|---|---|---|---|---|"]
    for c in costs:
        lines.append(f"| {c['dataset']} | {c['paradigm']} ({c['granularity'] or '-'}) | {c['cost']:.2f}x "
                     f"({c['cost_iqr'][0]:.2f}-{c['cost_iqr'][1]:.2f}) | {c['static_ms']:.0f} | {c['dynamic_ms']:.0f} |")
    lines += ["", f"Settings: {json.dumps(settings)}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--runs", default="/tmp/laudnet-accuracy-runs", help="run directories (checkpoints, logs)")
    parser.add_argument("--data", help="Fashion-MNIST directory (default: the Debian package's)")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, help="Fashion-MNIST training images (default: all 60,000)")
    parser.add_argument("--placed-train-size", type=int, default=15000)
    parser.add_argument("--test-size", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="teacher learning rate")
    parser.add_argument("--finetune-optimizer", default="adamw")
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-weight-decay", type=float, default=0.05)
    parser.add_argument("--budget-weight", type=float, default=20.0)
    parser.add_argument("--gate-lr-mult", type=float, default=10.0)
    parser.add_argument("--target-margin", type=float, default=0.05,
                        help="students train at target minus this: the squared budget penalty settles a little "
                             "above its target")
    parser.add_argument("--step-repeats", type=int, default=15)
    parser.add_argument("--only", choices=list(STUDENTS), help="one dataset only")
    parser.add_argument("--teachers-only", action="store_true", help="train the teachers, then stop")
    args = parser.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    quiet = dict(tensorboard=False, batch_size=args.batch_size, log_every=50)
    teacher_config = TrainConfig(epochs=args.teacher_epochs, lr=args.lr, static=True, **quiet)
    finetune = TrainConfig(epochs=args.finetune_epochs, optimizer=args.finetune_optimizer, lr=args.finetune_lr,
                           weight_decay=args.finetune_weight_decay, warmup_epochs=0.1,
                           budget_weight=args.budget_weight, gate_lr_mult=args.gate_lr_mult, **quiet)
    rows, costs = [], []
    for dataset, students in STUDENTS.items():
        if args.only and dataset != args.only:
            continue
        train_size = args.train_size if dataset == "fashion-mnist" else args.placed_train_size
        base = RunSpec(paradigm="none", dataset=dataset, data=args.data, train_size=train_size,
                       test_size=args.test_size)
        teacher = run(base, teacher_config, runs / dataset / "teacher")
        if args.teachers_only:
            continue
        reference = run(replace(base, teacher=str(teacher)), replace(finetune, static=True),
                        runs / dataset / "static")
        evaluations = {"teacher": evaluate_checkpoint(teacher, execution="masked"),
                       "static": evaluate_checkpoint(reference, execution="masked")}
        for paradigm, granularity, gate_scale, target in students:
            spec = replace(base, paradigm=paradigm, granularity=granularity, gate_scale=gate_scale,
                           teacher=str(teacher))
            config = replace(finetune, target=target - args.target_margin)
            checkpoint = run(spec, config, runs / dataset / f"{paradigm}-{target}")
            evaluations[paradigm] = evaluate_checkpoint(checkpoint, execution="masked", latency_batches=(1, 64),
                                                        repeats=10)
            costs.append(step_cost(spec, config, args.step_repeats))
        static_accuracy = evaluations["static"]["accuracy"]
        names = {paradigm: f"{paradigm} ({granularity or '-'})" for paradigm, granularity, _, _ in students}
        targets = {paradigm: target for paradigm, _, _, target in students}
        for name, e in evaluations.items():
            target = targets.get(name)
            delta = None if name == "static" else 100 * (e["accuracy"] - static_accuracy)
            rows.append({
                "dataset": dataset, "model": names.get(name, name),
                "paradigm": e["paradigm"], "target": target, "flops_ratio": e["flops_ratio"],
                "accuracy": e["accuracy"], "delta": delta,
                "target_met": None if target is None else bool(e["flops_ratio"] <= target and delta >= -0.5),
                "kept_on_object": (e["object"] or {}).get("kept_on_object"),
                "chance": (e["object"] or {}).get("chance"), "test_samples": e["test_samples"],
                "speedup_b1": e["latency"][0]["speedup"] if e["latency"] else None,
                "checkpoint": e["checkpoint"]})
        print(markdown(rows, costs, {}), flush=True)
    if not rows:
        return
    settings = {**{k: v for k, v in vars(args).items() if k not in ("out", "runs")},
                "finetune_config": asdict(finetune), "minutes": round((time.perf_counter() - started) / 60, 1),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    with open(out / "accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "accuracy.json").write_text(json.dumps({"rows": rows, "step_costs": costs, "settings": settings},
                                                  indent=2) + "\n")
    (out / "accuracy.md").write_text(markdown(rows, costs, settings))
    print(f"wrote {out / 'accuracy.md'} in {settings['minutes']} min", flush=True)


if __name__ == "__main__":
    main()
