"""Re-measure the channel-skipping rows of the README's speed tables after an engine change:
ResNet-50 with channel groups of 16 at r = 0.5 (batch 1 and 8) against every static
baseline, and ResNet-50's stride-1 bottlenecks with groups of 4 at batch 1 against eager.

    python benchmarks/channel_rows.py --out benchmarks/results/sparse_speed --name channel
"""

import argparse
from pathlib import Path

from tqdm import tqdm

from laudnet.measure.bench import RATES, bench_block, bench_network, write_results
from laudnet.measure.resnet import RESNET50_BLOCKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("laudnet-bench"))
    parser.add_argument("--name", default="channel")
    args = parser.parse_args()
    networks = [bench_network("resnet50", "channel", "16", 0.5, batch) for batch in tqdm((1, 8), desc="networks")]
    blocks = [bench_block(stage, stride, cin, width, side, "channel", 4, rate, 1)
              for stage, stride, cin, width, side in tqdm(RESNET50_BLOCKS, desc="blocks") if stride == 1
              for rate in RATES]
    for rows, name in ((networks, f"{args.name}_networks"), (blocks, f"{args.name}_blocks")):
        for path in write_results(rows, args.out, name).values():
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
