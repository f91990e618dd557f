"""The logs of a training run: ``steps.csv``, ``epochs.csv`` and TensorBoard events."""

from __future__ import annotations

import csv
from pathlib import Path


class RunLog:
    """``steps.csv``, ``epochs.csv`` and TensorBoard events of a run (rank 0 only)."""

    def __init__(self, out_dir: Path, tensorboard: bool, enabled: bool, resume_step: int,
                 history: list[dict]) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self.writer = None
        if not enabled:
            return
        steps_csv = out_dir / "steps.csv"
        kept = []
        if resume_step and steps_csv.exists():  # drop what a crashed run logged after the checkpoint
            with open(steps_csv, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        self._rewrite(steps_csv, kept)
        self._rewrite(out_dir / "epochs.csv", history)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step or None)

    @staticmethod
    def _rewrite(path: Path, rows: list[dict]) -> None:
        if not rows:
            path.unlink(missing_ok=True)
            return
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def step(self, row: dict) -> None:
        if not self.enabled:
            return
        self._append(self.out_dir / "steps.csv", row)
        self._scalars("train", row)

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        self._append(self.out_dir / "epochs.csv", row)
        self._scalars("epoch", row)
        if self.writer is not None:
            self.writer.flush()

    def _scalars(self, group: str, row: dict) -> None:
        """The row's figures as TensorBoard scalars ``group/name`` at its step."""
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{group}/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
