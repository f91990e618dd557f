"""Training checkpoints: what a run trained (:class:`RunSpec`), and its weights and state,
written atomically and loaded back into the model they belong to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .data.build import DataSplits, build_datasets
from .detection import create_detector, list_detectors
from .detection.detectors import max_size
from .dynamic import set_execution
from .errors import CheckpointError
from .models import create_model

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunSpec:
    """What a run trains: the model and the data, enough to rebuild both from a checkpoint.

    ``teacher`` is the checkpoint of the static teacher (distillation, and the student's
    initial weights when it has the same architecture).
    """

    model: str = "cifar_resnet20"
    paradigm: str = "spatial"
    granularity: str | None = None
    gate_scale: bool = False
    dataset: str = "cluttered"
    data: str | None = None
    image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    data_seed: int = 0
    teacher: str | None = None

    def datasets(self) -> DataSplits:
        return build_datasets(self.dataset, self.data, image_size=self.image_size, train_size=self.train_size,
                              test_size=self.test_size, seed=self.data_seed)

    def build_model(self, splits: DataSplits | None = None) -> nn.Module:
        """The network (a classifier, or for a detection dataset a detector of
        :func:`laudnet.detection.list_detectors` resizing images to the data's size)."""
        info = (splits or self.datasets()).info
        if info.task == "detection":
            if self.model not in list_detectors():
                raise ValueError(f"{self.dataset} is a detection dataset and {self.model!r} not a detector; "
                                 f"allowed: {', '.join(list_detectors())}")
            return create_detector(self.model, paradigm=self.paradigm, granularity=self.granularity,
                                   gate_scale=self.gate_scale, num_classes=info.num_classes,
                                   min_size=info.image_size, max_size=max_size(info.image_size))
        return create_model(self.model, paradigm=self.paradigm, granularity=self.granularity,
                            gate_scale=self.gate_scale, num_classes=info.num_classes,
                            in_channels=info.in_channels, input_size=info.image_size)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically: to a temporary file, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`train` (a run directory works too)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file; torch's message spans many lines
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}); "
                         "checkpoints are written by `laudnet train`") from None
    if not isinstance(state, dict) or "spec" not in state or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a laudnet training checkpoint")
    state["path"] = str(path)
    return state


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` exactly, or raise :class:`CheckpointError` naming
    the missing, unexpected and misshapen entries (a checkpoint of another architecture,
    number of classes or laudnet version)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or misshapen:
        parts = [f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                 for what, names in (("missing", missing), ("unexpected", unexpected), ("shapes differ:", misshapen))
                 if names]
        raise CheckpointError(f"the weights in {source} do not fit {type(model).__name__}: {'; '.join(parts)} "
                              "(another architecture, number of classes or laudnet version)")
    model.load_state_dict(state_dict)


def model_from_checkpoint(checkpoint: str | Path | dict, splits: DataSplits | None = None) -> nn.Module:
    """The trained model of a checkpoint, in eval mode and the execution it was trained in
    (``static`` for a teacher, else ``masked``)."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    spec = RunSpec(**state["spec"])
    model = spec.build_model(splits)
    load_weights(model, state["state_dict"], state["path"])
    return set_execution(model.eval(), "static" if state["config"]["static"] else "masked")
