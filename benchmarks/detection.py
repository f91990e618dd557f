"""Dynamic detectors against the static one: COCO AP on the test split, and measured speed of
the backbone and of the whole detector on square images, batch 1.

    laudnet eval runs/det-static && laudnet eval runs/det-spatial
    python benchmarks/detection.py --evals runs/det-static runs/det-spatial --dynamic runs/det-spatial \
        --out benchmarks/results/detection [--size 256 512] [--images 24] [--repeats 15]

Accuracy: the evaluations ``laudnet eval`` wrote (COCO AP on the test split, dynamic
detectors in sparse execution, the backbone's FLOPs ratio and the share of kept patches that
fall on objects). Speed: ``--images``
test scenes drawn on square canvases of each ``--size`` (same seed and object sizes relative
to the canvas as the test split), resized to exactly that size. The sparse backbone, with the gates it learned, runs
every image once per round; each dense baseline (the static ResNet body with the same
weights in torch eager NCHW, channels-last, ONNX Runtime and OpenVINO, and laudnet's own
engine with every gate open: its dense path) as many times, all
interleaved in one process (shuffled, a 20 ms idle gap before each call); the speedup is the
median per-round ratio with its interquartile range. The whole detector is timed sparse
against dense eager at batch 1, and at batch 2 with two sizes in one padded batch. Timings
are measured, never asserted.

``--blocks`` writes, instead, where the time goes (``blocks.md``): every piece of the sparse
body (the stem, each block) against the same piece of the static body in channels-last
eager, timed by hooks, with each block's activation rate and share of the static MACs.
"""

import argparse
import copy
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

import laudnet
from laudnet.checkpoint import load_checkpoint, model_from_checkpoint
from laudnet.data import ShapesDetection
from laudnet.dynamic import dynamic_networks
from laudnet.latency.predictor import walk_network
from laudnet.measure import interleaved, ratio
from laudnet.measure.bench import machine_description
from laudnet.measure.pieces import timed_pieces
from laudnet.measure.runtimes import dense_baselines
from laudnet.report import load_eval


def accuracy_row(evaluation: str) -> dict:
    """AP, backbone FLOPs and where the masks fall, from an evaluation of ``laudnet eval``."""
    result = load_eval(evaluation)
    if result.get("task") != "detection":
        raise ValueError(f"{evaluation} is not the evaluation of a detector")
    return {"run": Path(result["checkpoint"]).parent.name, "static": result["static_run"],
            "execution": result["execution"], "epochs": result["epochs"], **result["coco"]["bbox"],
            "flops_ratio": result["flops_ratio"], "object": result["object"]}


def static_body(body: torch.nn.Module) -> torch.nn.Module:
    """The torchvision ResNet-18 body holding ``body``'s weights: the dense reference."""
    reference = IntermediateLayerGetter(torchvision.models.resnet18(), dict(body.return_layers))
    reference.load_state_dict(laudnet.backbone_state_dict(body))
    return reference.eval()


def scenes(state: dict, size: int, count: int) -> list[torch.Tensor]:
    """``count`` test scenes of the checkpoint's data on ``size``-pixel square canvases."""
    test_seed = 2 * state["spec"]["data_seed"] + 1
    data = ShapesDetection(count, size, seed=test_seed)
    return [data[i][0] for i in range(count)]


def detector_on_scenes(checkpoint: str, size: int, count: int) -> tuple[torch.nn.Module, list, list, torch.nn.Module]:
    """The detector of ``checkpoint`` resizing to ``size``, ``count`` test scenes, the
    backbone's inputs for them (transformed, batch 1) and its sparse body."""
    state = load_checkpoint(checkpoint)
    detector = model_from_checkpoint(state).eval()
    detector.transform.min_size, detector.transform.max_size = (size,), size
    images = scenes(state, size, count)
    with torch.no_grad():
        inputs = [detector.transform([image])[0].tensors for image in images]
    sparse_body = laudnet.set_execution(copy.deepcopy(dynamic_networks(detector)[0]), "sparse").eval()
    return detector, images, inputs, sparse_body


def speed_rows(checkpoint: str, size: int, count: int, repeats: int) -> list[dict]:
    """Backbone and detector speed of one dynamic checkpoint (see the module docstring)."""
    detector, images, inputs, sparse_body = detector_on_scenes(checkpoint, size, count)
    open_body = laudnet.set_decisions(copy.deepcopy(sparse_body), rate=1.0)
    dense = {**dense_baselines(static_body(sparse_body), inputs[0]), "engine_gates_open": lambda: open_body(inputs[0])}
    candidates = {name: (lambda call=call: [call() for _ in inputs]) for name, call in dense.items()}
    candidates["sparse"] = lambda: [sparse_body(x) for x in inputs]
    rates = []
    with torch.no_grad():
        for x in inputs:
            sparse_body(x)
            rates.append(laudnet.stats(sparse_body).flops_ratio)
        timings = interleaved(candidates, repeats=repeats, warmup=1, gap=0.02)
    fastest = min(dense, key=lambda name: timings[name].median_ms)
    rows = []
    for name in dense:
        speedup = ratio(timings, name, "sparse")
        rows.append({"run": Path(checkpoint).name, "part": "backbone", "input": f"1x3x{size}x{size}", "baseline": name,
                     "fastest": name == fastest, "dense_ms": timings[name].median_ms / count,
                     "sparse_ms": timings["sparse"].median_ms / count, "speedup": speedup.median,
                     "speedup_iqr": list(speedup.spread), "flops_ratio": sum(rates) / count})
    rows += detector_rows(checkpoint, detector, images, repeats)
    return rows


def detector_rows(checkpoint: str, detector: torch.nn.Module, images: list[torch.Tensor], repeats: int) -> list[dict]:
    """The whole detector, sparse against dense eager: batch 1 over every image, and batch 2
    pairing each square image with a 3/4-height crop of the next (one padded batch)."""
    sparse = laudnet.set_execution(copy.deepcopy(detector), "sparse").eval()
    dense = laudnet.set_execution(copy.deepcopy(detector), "static").eval()
    size = images[0].shape[-1]
    pairs = [[images[i], images[(i + 1) % len(images)][:, : 3 * size // 4]] for i in range(0, len(images), 2)]
    rows = []
    for batch, inputs in ((1, [[image] for image in images]), (2, pairs)):
        with torch.no_grad():
            timings = interleaved({"dense": lambda: [dense(x) for x in inputs],
                                   "sparse": lambda: [sparse(x) for x in inputs]}, repeats=repeats, warmup=1, gap=0.02)
        speedup = ratio(timings, "dense", "sparse")
        shapes = " + ".join("x".join(map(str, image.shape[-2:])) for image in inputs[0])
        rows.append({"run": Path(checkpoint).name, "part": "detector", "input": f"{batch}: {shapes}", "baseline": "eager",
                     "fastest": True, "dense_ms": timings["dense"].median_ms / len(inputs),
                     "sparse_ms": timings["sparse"].median_ms / len(inputs), "speedup": speedup.median,
                     "speedup_iqr": list(speedup.spread), "flops_ratio": None})
    return rows


@torch.no_grad()
def block_rows(checkpoint: str, size: int, count: int, repeats: int) -> list[dict]:
    """Where the time goes: each piece of the sparse body (the stem, every block) against
    the same piece of the static body in channels-last eager (the fastest eager way; the
    static runtimes cannot be timed piece by piece), timed by hooks on every scene,
    interleaved in shuffled order; per piece the medians over scenes and rounds, with the
    block's activation rate and its share of the static MACs (halos included) on these scenes."""
    _, _, inputs, sparse_body = detector_on_scenes(checkpoint, size, count)
    inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    bodies = {"sparse": sparse_body, "dense": static_body(sparse_body).to(memory_format=torch.channels_last)}
    walks = {name: walk_network(body, size) for name, body in bodies.items()}
    names = [walks["sparse"].segments[piece.indices[0]].name for piece in walks["sparse"].pieces()]
    rates, macs = defaultdict(list), defaultdict(list)
    for x in inputs:
        sparse_body(x)
        for block in laudnet.stats(sparse_body).blocks:
            rates[block.name].append(float(block.rate.mean()))
            macs[block.name].append(float(block.macs.mean()) / block.static_macs)
    seconds = timed_pieces(bodies, walks, inputs, repeats, gap_s=0.01)
    rows = []
    for index, name in enumerate(names):
        dense_ms, sparse_ms = (1e3 * statistics.median(t[index] for t in seconds[kind]) for kind in ("dense", "sparse"))
        rows.append({"run": Path(checkpoint).name, "size": size, "piece": "stem" if index == 0 else name,
                     "rate": statistics.mean(rates[name]) if name in rates else None,
                     "macs_ratio": statistics.mean(macs[name]) if name in macs else None,
                     "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms})
    return rows


def blocks_markdown(rows: list[dict]) -> str:
    lines = ["| run | size | piece | activation rate | MACs (of static) | dense ms (eager channels-last) | sparse ms "
             "| speedup |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate, share = ("-", "-") if r["rate"] is None else (f"{r['rate']:.3f}", f"{r['macs_ratio']:.1%}")
        lines.append(f"| {r['run']} | {r['size']} | {r['piece']} | {rate} | {share} | {r['dense_ms']:.2f} | "
                     f"{r['sparse_ms']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def markdown(accuracy: list[dict], speed: list[dict], machine: str) -> str:
    lines = [f"Machine: {machine}", "", "| run | execution | epochs | AP | AP50 | AP75 | APs | APm | APl | "
             "backbone FLOPs | kept patches on objects (all patches) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in accuracy:
        share = "-" if not r["object"] or r["static"] else \
            f"{r['object']['kept_on_object']:.1%} ({r['object']['chance']:.1%})"
        lines.append(f"| {r['run']} | {r['execution']} | {r['epochs']} | " + " | ".join(
            f"{100 * r[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
            + f" | {r['flops_ratio']:.1%} | {share} |")
    lines += ["", "| run | part | input | dense baseline | dense ms | sparse ms | speedup (median) | IQR | FLOPs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in speed:
        baseline = f"**{r['baseline']}**" if r["fastest"] else r["baseline"]
        flops = "-" if r["flops_ratio"] is None else f"{r['flops_ratio']:.1%}"
        lines.append(f"| {r['run']} | {r['part']} | {r['input']} | {baseline} | {r['dense_ms']:.1f} | "
                     f"{r['sparse_ms']:.1f} | {r['speedup']:.2f}x | {r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f} "
                     f"| {flops} |")
    lines += ["", "Bold: the fastest dense baseline of the backbone. Detector rows: dense = the same detector in "
              "static execution (torch eager)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evals", nargs="*", default=[], help="eval.json files of detectors (or run directories)")
    parser.add_argument("--dynamic", nargs="+", required=True, help="dynamic detector checkpoints to time")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/detection"))
    parser.add_argument("--size", type=int, nargs="+", default=[512])
    parser.add_argument("--images", type=int, default=24, help="test scenes per size (the first ones are busier than the average)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--blocks", action="store_true",
                        help="instead of the speed table, time every piece of the sparse and the static body "
                             "(stem, blocks): blocks.md and blocks.json")
    args = parser.parse_args()
    machine = machine_description()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.blocks:
        rows = [row for c in args.dynamic for size in args.size for row in block_rows(c, size, args.images, args.repeats)]
        (args.out / "blocks.json").write_text(json.dumps({"machine": machine, "blocks": rows}, indent=2) + "\n")
        (args.out / "blocks.md").write_text(f"Machine: {machine}\n\n" + blocks_markdown(rows))
        print(blocks_markdown(rows))
        return
    accuracy = [accuracy_row(e) for e in args.evals]
    speed = [row for c in args.dynamic for size in args.size for row in speed_rows(c, size, args.images, args.repeats)]
    (args.out / "detection.json").write_text(json.dumps({"machine": machine, "accuracy": accuracy, "speed": speed},
                                                        indent=2) + "\n")
    (args.out / "detection.md").write_text(markdown(accuracy, speed, machine))
    print(markdown(accuracy, speed, machine))


if __name__ == "__main__":
    main()
