"""``laudnet demo``: the whole story on the embedded data in a few minutes on 2 CPU cores.

Train a static CIFAR-style ResNet-20 (the teacher) on the procedural cluttered-objects data,
train a dynamic student from it with a FLOPs budget and distillation, evaluate both
(accuracy, FLOPs, where the masks fall, sparse-vs-dense latency measured here) and write
the HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from .checkpoint import RunSpec
from .evaluate import evaluate_checkpoint
from .outputs import LOCK_FILE, claim
from .report import write_report
from .train.loop import TrainConfig, train

MARKER = "demo.json"

DATA = RunSpec(model="cifar_resnet20", dataset="cluttered", image_size=48, train_size=3000, test_size=1000)
TEACHER = TrainConfig(epochs=3, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=0.05, warmup_epochs=0.3,
                      static=True, tensorboard=False)
STUDENT = TrainConfig(epochs=4, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=0.1,
                      gate_lr_mult=10.0, budget_weight=20.0, tensorboard=False)
GRANULARITY = {"spatial": "8-8-6", "layer+spatial": "8-8-6", "channel": "4", "layer+channel": "4"}
"""Student granularity per paradigm: large patches keep the halo overhead of the sparse
spatial path small on 48×48 images (feature maps of 48, 24 and 12: grids of 6×6, 3×3, 2×2)."""


def _prepare(out_dir: Path) -> None:
    """Make the claimed ``out_dir`` the demo's: clear a previous demo, refuse any other content."""
    entries = [entry for entry in out_dir.iterdir() if entry.name != LOCK_FILE]
    if entries and not (out_dir / MARKER).exists():
        raise ValueError(f"{out_dir} exists and is not a previous demo; choose another --out")
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def run_demo(out_dir: str | Path = "laudnet-demo", *, paradigm: str = "spatial", granularity: str | None = None,
             target: float = 0.5, seed: int = 0) -> Path:
    """Run the demo into ``out_dir`` and return the path of its report."""
    out_dir = Path(out_dir)
    student_spec = replace(DATA, paradigm=paradigm, granularity=granularity or GRANULARITY.get(paradigm))
    student_spec.build_model()  # reject a bad paradigm or granularity before training anything
    with claim(out_dir):
        _prepare(out_dir)
        return _run(out_dir, student_spec, paradigm, target, seed)


def _run(out_dir: Path, student_spec: RunSpec, paradigm: str, target: float, seed: int) -> Path:
    """Teacher, student, evaluations and report into the prepared ``out_dir``."""
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, message: str) -> None:
        phases[name] = time.perf_counter()
        print(f"[{time.perf_counter() - started:5.0f} s] {message}", flush=True)

    (out_dir / MARKER).write_text(json.dumps({"status": "running", "paradigm": paradigm}) + "\n")
    phase("teacher", "training the static teacher (CIFAR-style ResNet-20 on 48x48 cluttered objects)")
    teacher = train(replace(DATA, paradigm="none"), replace(TEACHER, seed=seed), out_dir / "teacher")
    phase("student", f"training the dynamic student ({paradigm}, FLOPs target {target:.0%}) from the teacher")
    student = train(replace(student_spec, teacher=str(teacher)), replace(STUDENT, target=target, seed=seed),
                    out_dir / "student")
    phase("eval", "evaluating both; measuring sparse against dense latency on this machine")
    evals = [evaluate_checkpoint(teacher, progress=True),
             evaluate_checkpoint(student, latency_batches=(1, 32), repeats=15, hardware=("v100", "jetson_tx2"),
                                 progress=True)]
    phase("report", "writing the report")
    report = write_report(evals, out_dir / "report", examples=8, title=f"laudnet demo: {paradigm} student")
    total = time.perf_counter() - started
    names = list(phases)
    seconds = {name: (phases[names[i + 1]] if i + 1 < len(names) else started + total) - phases[name]
               for i, name in enumerate(names)}
    summary = {"status": "done", "paradigm": paradigm, "target": target, "seconds": total, "phase_seconds": seconds,
               "teacher_accuracy": evals[0]["accuracy"], "student_accuracy": evals[1]["accuracy"],
               "student_flops_ratio": evals[1]["flops_ratio"], "report": str(report)}
    (out_dir / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[{total:5.0f} s] teacher {100 * evals[0]['accuracy']:.1f} % top-1; student "
          f"{100 * evals[1]['accuracy']:.1f} % at {evals[1]['flops_ratio']:.0%} of the FLOPs; speedup "
          + ", ".join(f"batch {m['batch']}: {m['speedup']:.2f}x" for m in evals[1]["latency"]), flush=True)
    return report
