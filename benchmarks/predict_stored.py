"""Predict stored whole-network validations again with other profiles.

    python benchmarks/predict_stored.py --hardware run17.json,run17-extended.json \
        benchmarks/results/latency/networks-run1[78]*.json

Every validation measures the machine at another moment, so comparing two profiles on
their own validations mixes the profiles with the moments. This predicts the speedup of
every stored row (``laudnet latency validate --networks`` writes each block's realized rate
into ``networks.json``; runs 16 and later) with each profile and prints, per profile and
file, the share within ±10 % of the measured speedup, and over all rows with the RMSPE.
Nothing is measured; profiles are the user's own (calibration writes them, they are not
stored here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from laudnet.latency.hardware import load_hardware
from laudnet.measure.validate_networks import NetworkConfig, predict_network

def stored_rows(path: Path) -> list[dict]:
    """The rows of one stored validation; an error names a file without realized rates."""
    rows = json.loads(path.read_text())["rows"]
    if any("realized_rates" not in row for row in rows):
        raise SystemExit(f"{path}: rows without realized_rates (validations before run 16); "
                         "they cannot be predicted again")
    return rows


def speedup_errors(hardware: str, files: dict[Path, list[dict]]) -> dict[Path, np.ndarray]:
    """Per file, predicted over measured speedup minus one for each row."""
    hw = load_hardware(hardware)
    predicted: dict[str, float] = {}
    errors = {}
    for path, rows in files.items():
        for row in rows:
            if row["label"] not in predicted:
                config = NetworkConfig.from_row(row)
                predicted[row["label"]] = predict_network(config, hw, row["realized_rates"])["speedup"]
        errors[path] = np.array([predicted[row["label"]] / row["measured_speedup"] - 1 for row in rows])
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hardware", required=True, help="comma-separated profiles (names or JSON paths)")
    parser.add_argument("validations", nargs="+", type=Path, help="stored networks.json files")
    args = parser.parse_args()
    files = {path: stored_rows(path) for path in args.validations}
    for hardware in args.hardware.split(","):
        errors = speedup_errors(hardware, files)
        every = np.concatenate(list(errors.values()))
        shares = " ".join(f"{path.stem} {np.mean(np.abs(e) <= 0.1):.0%}" for path, e in errors.items())
        print(f"{hardware}: {shares} | all {len(every)} rows: {np.mean(np.abs(every) <= 0.1):.1%} within ±10 %, "
              f"RMSPE {np.sqrt(np.mean(every ** 2)):.1%}")


if __name__ == "__main__":
    main()
