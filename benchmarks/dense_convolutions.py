"""The engine's dense convolution against the dense baselines, one layer at a time.

A block whose gates keep most of its map computes all of it (``DENSE_FRACTION``) with the
engine's packed convolution (:class:`laudnet.sparse.packed.PackedConv`: batch norm folded,
ReLU fused, the backend chosen by measurement). This times it, on the 3×3 convolution + batch
norm + ReLU of each ResNet stage at the map sizes of a ``--size`` input, against the same
layer in torch eager (NCHW, channels-last), ONNX Runtime and OpenVINO, interleaved in one
process; it tells whether a sparse network's dense parts run at the static runtimes' speed.

    python benchmarks/dense_convolutions.py [--size 512] [--repeats 15]
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F

from laudnet.measure import Timing, interleaved, ratio
from laudnet.measure.bench import machine_description
from laudnet.measure.runtimes import dense_baselines
from laudnet.sparse import PackedConv

STAGES = ((64, 4), (128, 8), (256, 16), (512, 32))
"""Channels and stride of the 3×3 convolutions of each ResNet-18 stage."""


def layer_timings(channels: int, side: int, repeats: int) -> dict[str, Timing]:
    """Interleaved timings of each way to run one 3×3 convolution + batch norm + ReLU on a
    ``channels`` × ``side``² map (batch 1): the dense baselines and the ``engine``."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                          nn.ReLU()).eval()
    nn.init.normal_(layer[1].running_mean)
    x = torch.randn(1, channels, side, side)
    packed = PackedConv(layer[0], layer[1])
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        candidates = {**dense_baselines(layer, x), "engine": lambda: packed.map(x_last, F.relu)}
        torch.testing.assert_close(candidates["engine"](), layer(x), rtol=1e-4, atol=1e-4)
        return interleaved(candidates, repeats=repeats, warmup=2, gap=0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input side the map sizes derive from")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    args = parser.parse_args()
    print(f"Machine: {machine_description()}\n")
    layers = {f"{c} ch, {args.size // s}²": layer_timings(c, args.size // s, args.repeats) for c, s in STAGES}
    names = list(next(iter(layers.values())))
    print("| layer | " + " | ".join(f"{n} ms" for n in names) + " | engine speedup vs fastest baseline |")
    print("|---|" + "---|" * (len(names) + 1))
    for label, timings in layers.items():
        fastest = min((n for n in names if n != "engine"), key=lambda n: timings[n].median_ms)
        print(f"| {label} | " + " | ".join(f"{timings[n].median_ms:.2f}" for n in names)
              + f" | {ratio(timings, fastest, 'engine').median:.2f}x ({fastest}) |")


if __name__ == "__main__":
    main()
