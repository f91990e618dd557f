"""Distributed data parallel on CPU: two ranks under torchrun with gloo."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from laudnet.checkpoint import RunSpec, load_checkpoint, model_from_checkpoint
from laudnet.data.loaders import eval_loader
from laudnet.metrics import accumulate


def test_two_process_training_on_cpu(tmp_path):
    out = tmp_path / "run"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "laudnet", "train", "--dataset", "cluttered", "--image-size", "16", "--train-size", "64",
               "--test-size", "15", "--batch-size", "8", "--epochs", "1", "--paradigm", "layer",
               "--out", str(out), "--no-progress", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("checkpoint: ") == 1  # only rank 0 reports and writes

    state = load_checkpoint(out)
    assert state["world_size"] == 2
    assert state["step"] == 64 // (2 * 8)  # each rank takes half of every epoch
    with open(out / "epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1

    # the validation accuracy summed over the two ranks' shares equals one process's
    spec = RunSpec(**state["spec"])
    model = model_from_checkpoint(state)
    single = accumulate(model, eval_loader(spec.datasets().test, 4))
    assert single.samples == 15
    assert float(rows[0]["val_accuracy"]) == single.accuracy
    assert abs(float(rows[0]["val_flops_ratio"]) - single.flops_ratio) < 1e-9
    assert any(f.name.startswith("events") for f in (out / "tensorboard").iterdir())
    assert torch.isfinite(torch.tensor(float(rows[0]["loss"])))
