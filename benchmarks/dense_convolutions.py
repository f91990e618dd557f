"""The engine's dense convolution against the dense baselines, stage by stage.

A block whose gates keep most of its map computes all of it (``DENSE_FRACTION``) with the
engine's packed convolution (:class:`laudnet.sparse.packed.PackedConv`: batch norm folded,
ReLU fused, the backend chosen by measurement). This times it on a stack of ``--depth``
3×3 convolution + batch norm + ReLU layers of each ResNet stage at the map sizes of a
``--size`` input, against the same stack in torch eager (NCHW, channels-last), ONNX Runtime
and OpenVINO, interleaved in one process, and gives milliseconds per layer; it tells whether
a sparse network's dense parts run at the static runtimes' speed. Use a stack as deep as a
stage (4): the static runtimes convert their input and output to their own blocked layout
once per call, which a single layer (``--depth 1``) pays in full and a network does not.

    python benchmarks/dense_convolutions.py [--size 512] [--depth 4] [--repeats 15]
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


def stack_timings(channels: int, side: int, depth: int, repeats: int) -> dict[str, Timing]:
    """Interleaved timings of each way to run ``depth`` 3×3 convolution + batch norm + ReLU
    layers on a ``channels`` × ``side``² map (batch 1): the dense baselines and the ``engine``."""
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        nn.init.normal_(layers[-2].running_mean)
    stack = nn.Sequential(*layers).eval()
    x = torch.randn(1, channels, side, side)
    packed = [PackedConv(stack[i], stack[i + 1]) for i in range(0, len(stack), 3)]
    x_last = x.contiguous(memory_format=torch.channels_last)

    def engine() -> torch.Tensor:
        y = x_last
        for conv in packed:
            y = conv.map(y, F.relu)
        return y

    with torch.no_grad():
        torch.testing.assert_close(engine(), stack(x), rtol=1e-3, atol=1e-3)
        return interleaved({**dense_baselines(stack, x), "engine": engine}, repeats=repeats, warmup=2, gap=0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input side the map sizes derive from")
    parser.add_argument("--depth", type=int, default=4, help="layers per stack (a ResNet-18 stage has 4)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    args = parser.parse_args()
    if args.depth < 1:
        parser.error(f"--depth must be at least 1, got {args.depth}")
    print(f"Machine: {machine_description()}\n\nStacks of {args.depth} layers; milliseconds per layer.\n")
    stacks = {f"{c} ch, {args.size // s}²": stack_timings(c, args.size // s, args.depth, args.repeats)
              for c, s in STAGES}
    names = list(next(iter(stacks.values())))
    print("| layer | " + " | ".join(f"{n} ms" for n in names) + " | engine speedup vs fastest baseline |")
    print("|---|" + "---|" * (len(names) + 1))
    for label, timings in stacks.items():
        fastest = min((n for n in names if n != "engine"), key=lambda n: timings[n].median_ms)
        speedup = ratio(timings, fastest, "engine")
        print(f"| {label} | " + " | ".join(f"{timings[n].median_ms / args.depth:.2f}" for n in names)
              + f" | {speedup.median:.2f}x ({speedup.spread[0]:.2f}-{speedup.spread[1]:.2f}; {fastest}) |")


if __name__ == "__main__":
    main()
