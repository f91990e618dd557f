"""Check the search's choice against measurement on this CPU.

    nice -n 19 python benchmarks/search_cpu_check.py --out benchmarks/results/search

Searches ResNet-50 at activation rate 0.5 for the calibrated ``local`` profile (run
``laudnet latency calibrate`` first; ``--hardware`` checks another CPU profile's choice), then measures the sparse speedup over torchvision's
dense network of the searched design and of a handful of other candidates (the best
design of each single paradigm, the default spatial granularity 4-4-2-1 and S = 1), each
interleaved with the dense network in one process at fixed random decisions of the rate
(:func:`laudnet.measure.bench.bench_network`). Reports the median speedup with its
interquartile range, the predicted one, and whether the searched design's measured speedup
is within 10 % of the best measured. Timings are never asserted; this writes
``cpu_check.csv`` and ``cpu_check.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import asdict
from pathlib import Path

import torch

import laudnet
from laudnet.latency.hardware import load_hardware
from laudnet.latency.predictor import predict_walk, walk_network
from laudnet.measure import stable_allocator
from laudnet.measure.bench import bench_network, machine_description
from laudnet.search import SearchSpace


def candidates(arch: str, hardware: str, batch: int, rate: float) -> list[tuple[str, str, str, float]]:
    """``(label, paradigm, granularity, predicted speedup)``: the searched design first."""
    space = SearchSpace(arch)
    result = space.search(hardware, batch, rate)
    designs = [("searched mix", result.paradigm, result.granularity)]
    for paradigm in ("spatial", "channel", "layer"):
        best = space.search(hardware, batch, rate, paradigms=(paradigm,))
        designs.append((f"searched {paradigm}", best.paradigm, best.granularity))
    designs += [("spatial default", "spatial", "4-4-2-1"), ("spatial S=1", "spatial", "1")]
    unique, seen = [], set()
    for label, paradigm, granularity in designs:
        with torch.device("meta"):
            model = laudnet.create_model(arch, paradigm=paradigm, granularity=granularity)
        key = (model.paradigm, model.granularity)
        if key in seen:
            continue
        seen.add(key)
        predicted = predict_walk(walk_network(model), hardware, batch, rates=rate).total_ms
        unique.append((label, paradigm, granularity, result.static_ms / predicted))
    return unique


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search"))
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--hardware", default="local", help="a CPU profile (default %(default)s)")
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per candidate")
    parser.add_argument("--decisions", type=int, default=4,
                        help="random decision sets per round (layer gates at batch 1 need several for the "
                             "realized rate to approach the target)")
    parser.add_argument("--threads", type=int, default=None, help="default: those of the local profile")
    parser.add_argument("--label", default="", help="e.g. 'measured under load'")
    args = parser.parse_args()
    hw = load_hardware(args.hardware)
    if hw.kind != "cpu":
        parser.error(f"--hardware {args.hardware} is a {hw.kind.upper()} profile; this check measures this CPU")
    threads = args.threads or hw.model.get("threads", torch.get_num_threads())
    torch.set_num_threads(threads)
    stable_allocator()  # as during calibration: the predictions are for a memory-reusing allocator
    load_before = os.getloadavg()
    rows = []
    for label, paradigm, granularity, predicted in candidates(args.arch, hw.name, args.batch_size, args.rate):
        row = bench_network(args.arch, paradigm, granularity, args.rate, args.batch_size, repeats=args.repeats,
                            decisions=args.decisions)
        rows.append(dict(label=label, predicted_speedup=predicted, **asdict(row)))
        print(f"{label:<18} {paradigm} / {granularity}: predicted {predicted:.2f}x, measured {row.speedup:.2f}x "
              f"(IQR {row.speedup_q1:.2f}-{row.speedup_q3:.2f})", flush=True)
    load_after = os.getloadavg()
    best = max(rows, key=lambda r: r["speedup"])
    searched = rows[0]
    share = searched["speedup"] / best["speedup"]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "cpu_check.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"CPU check{' (' + args.label + ')' if args.label else ''}: {args.arch} searched for `{hw.name}` "
             f"({'calibrated' if hw.calibrated else 'uncalibrated'}), activation rate {args.rate:g}, "
             f"batch {args.batch_size}, {threads} threads; {machine_description()}; load average "
             f"{load_before[0]:.1f} before, {load_after[0]:.1f} after.", "",
             "| candidate | paradigm / granularity | predicted speedup | measured speedup (IQR) | realized rate "
             "| dense ms | sparse ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['paradigm']} / {r['granularity']} | {r['predicted_speedup']:.2f}x "
                     f"| {r['speedup']:.2f}x ({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f}) | {r['rate']:.2f} "
                     f"| {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} |")
    verdict = "within" if share >= 0.9 else "NOT within"
    lines += ["", f"The searched design's measured speedup is {share:.0%} of the best measured "
                  f"({best['label']}, {best['speedup']:.2f}x): {verdict} 10 %. Speedups are medians of "
                  f"{args.repeats} interleaved rounds against torchvision's dense network; the realized rate "
                  "is the MAC-weighted activation rate of the measured decisions."]
    (args.out / "cpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
