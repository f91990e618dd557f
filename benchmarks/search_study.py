"""Predicted latency of dynamic ResNets relative to the static network, per device and
activation rate: spatial S = 1, the searched spatial granularity, channel skipping (searched
G), layer skipping and the searched mix of paradigms.

    python benchmarks/search_study.py --out benchmarks/results/search

Every figure is a *prediction* of laudnet's latency predictor (GPU profiles: uncalibrated,
from datasheets; ``local``: calibrated on this CPU by ``laudnet latency calibrate``). The
static baseline is torchvision's network priced on the same device. Writes
``study.csv`` (one row per figure), ``study.md`` (the table and the check of the seeds'
qualitative findings) and ``study.png`` (latency ratio against activation rate).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from laudnet import create_model
from laudnet.latency.hardware import load_hardware
from laudnet.latency.predictor import predict_walk, walk_network
from laudnet.search import SearchSpace

DEVICES = [("v100", 128), ("rtx3090", 128), ("jetson_tx2", 1), ("local", 1), ("x86_avx2", 1)]
RATES = (0.25, 0.5, 0.75)
SEARCHED = {"spatial (searched S)": ("spatial",), "channel (searched G)": ("channel",), "layer": ("layer",),
            "searched mix": ("spatial", "channel", "layer")}
COLUMNS = ["spatial S=1", *SEARCHED]


def study(archs: list[str], devices: list[tuple[str, int]], rates=RATES) -> tuple[list[dict], list[str]]:
    """The study's rows (one per figure) and notes about skipped devices."""
    rows, notes, usable = [], [], []
    for name, batch in devices:
        try:
            usable.append((load_hardware(name), batch))
        except ValueError as error:
            notes.append(f"{name} skipped: {error}")
    for arch in archs:
        space = SearchSpace(arch, 224)
        with torch.device("meta"):
            pixel = walk_network(create_model(arch, paradigm="spatial", granularity="1"))
        for hw, batch in usable:
            for rate in rates:
                results = {column: space.search(hw, batch, rate, paradigms=paradigms)
                           for column, paradigms in SEARCHED.items()}
                static = results["layer"].static_ms
                figures = {"spatial S=1": (predict_walk(pixel, hw, batch, rates=rate).total_ms, "1", None)}
                for column, result in results.items():
                    design = {"layer": "", "searched mix": f"{result.paradigm} / {result.granularity}"}.get(
                        column, result.granularity)
                    figures[column] = (result.latency_ms, design, result.flops_ratio)
                for column, (ms, design, flops) in figures.items():
                    rows.append(dict(arch=arch, hardware=hw.name, calibrated=hw.calibrated, batch=batch, rate=rate,
                                     column=column, design=design, latency_ms=ms, static_ms=static,
                                     ratio=ms / static, flops_ratio=flops))
    return rows, notes


def findings(rows: list[dict]) -> list[str]:
    """The seeds' qualitative findings, checked against the predictions (V100, r = 0.5)."""
    lines = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        at = {r["column"]: r for r in rows if r["arch"] == arch and r["hardware"] == "v100" and r["rate"] == 0.5}
        if not at:
            continue
        pixel, coarse = at["spatial S=1"], at["spatial (searched S)"]
        layer, channel = at["layer"], at["channel (searched G)"]
        lines += [
            f"- {arch}, V100, r = 0.5: spatial S = 1 at {pixel['ratio']:.2f}x static: "
            + ("slower than static, as the seeds found." if pixel["ratio"] > 1 else
               "NOT slower than static, unlike the seeds: this engine computes each unit's halo once, on "
               "channels-last pixel rows, instead of per patch (see the README)."),
            f"- {arch}, V100, r = 0.5: coarse spatial (S = {coarse['design']}) at {coarse['ratio']:.2f}x: "
            + ("faster than static, as the seeds found." if coarse["ratio"] < 1 else "not faster than static."),
            f"- {arch}, V100, r = 0.5: layer {layer['ratio']:.2f}x, channel {channel['ratio']:.2f}x static "
            f"(seeds: about 0.6x).",
        ]
    return lines


def markdown(rows: list[dict], notes: list[str]) -> str:
    keys = list(dict.fromkeys((r["arch"], r["hardware"], r["batch"], r["rate"]) for r in rows))
    header = ("| model | device | batch | r | static ms | " + " | ".join(COLUMNS) + " |\n"
              + "|---" * (5 + len(COLUMNS)) + "|\n")
    lines = []
    for arch, hardware, batch, rate in keys:
        cells = {r["column"]: r for r in rows if (r["arch"], r["hardware"], r["batch"], r["rate"]) ==
                 (arch, hardware, batch, rate)}
        static = cells["layer"]["static_ms"]
        values = []
        for column in COLUMNS:
            r = cells[column]
            design = f" ({r['design']})" if r["design"] and column != "spatial S=1" else ""
            values.append(f"{r['ratio']:.2f}{design}")
        lines.append(f"| {arch} | {hardware} | {batch} | {rate:g} | {static:.2f} | " + " | ".join(values) + " |")
    calibrated = {r["hardware"]: r["calibrated"] for r in rows}
    legend = ["Predicted latency of one batch relative to torchvision's static network on the same device "
              "(lower is faster). Spatial and channel cells give the searched per-stage granularity, the mix "
              "cell the searched paradigm / granularity. Every gate at activation rate r.",
              "Devices: " + ", ".join(f"{h} ({'calibrated on this machine' if c else 'uncalibrated profile'})"
                                      for h, c in calibrated.items()) + "."]
    return "\n\n".join(legend + [header + "\n".join(lines)] + (["\n".join(f"- {n}" for n in notes)] if notes else [])
                       + ["Seeds' findings checked:\n\n" + "\n".join(findings(rows))]) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["arch"] for r in rows))
    devices = list(dict.fromkeys(r["hardware"] for r in rows))
    figure, axes = plt.subplots(len(archs), len(devices), figsize=(3.2 * len(devices), 3.0 * len(archs)),
                                sharex=True, squeeze=False)
    for i, arch in enumerate(archs):
        for j, device in enumerate(devices):
            ax = axes[i][j]
            for column in COLUMNS:
                points = sorted((r["rate"], r["ratio"]) for r in rows
                                if r["arch"] == arch and r["hardware"] == device and r["column"] == column)
                ax.plot(*zip(*points), marker="o", label=column)
            ax.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
            batch = next(r["batch"] for r in rows if r["hardware"] == device)
            ax.set_title(f"{arch}, {device}, batch {batch}", fontsize=9)
            ax.set_xlabel("activation rate r")
            if j == 0:
                ax.set_ylabel("predicted latency / static")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search"))
    parser.add_argument("--archs", default="resnet50,resnet101")
    parser.add_argument("--devices", default=",".join(f"{d}:{b}" for d, b in DEVICES),
                        help="name:batch pairs separated by commas (default: %(default)s)")
    args = parser.parse_args()
    devices = [(d.split(":")[0], int(d.split(":")[1])) for d in args.devices.split(",")]
    rows, notes = study(args.archs.split(","), devices)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "study.md").write_text(markdown(rows, notes))
    plot(rows, args.out / "study.png")
    print((args.out / "study.md").read_text())


if __name__ == "__main__":
    main()
