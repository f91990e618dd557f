"""The training loop: every paradigm learns, checkpoints resume exactly, NaN stops cleanly."""

import csv

import pytest
import torch

import laudnet
from laudnet.checkpoint import RunSpec, load_checkpoint, model_from_checkpoint, save_checkpoint
from laudnet.data import ClutteredObjects
from laudnet.errors import NonFiniteError
from laudnet.train.loop import Trainer, TrainConfig, resume, train, warmup_cosine

TINY = dict(dataset="cluttered", image_size=16, train_size=48, test_size=16)
QUIET = dict(tensorboard=False, progress_bar=False, log_every=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A static teacher checkpoint on tiny cluttered data (one epoch)."""
    out = tmp_path_factory.mktemp("teacher")
    return train(RunSpec(paradigm="none", **TINY), TrainConfig(epochs=1, batch_size=16, static=True, **QUIET), out)


@pytest.mark.parametrize("paradigm, granularity", [("spatial", "8-4-4"), ("channel", "4"), ("layer", None)])
def test_a_few_steps_lower_the_loss(paradigm, granularity):
    torch.manual_seed(0)
    images = torch.stack([ClutteredObjects(16, size=16)[i][0] for i in range(16)])
    labels = torch.arange(16) % 8
    make = lambda p, g: laudnet.create_model("cifar_resnet20", paradigm=p, granularity=g, num_classes=8,
                                            in_channels=1, input_size=16)
    teacher = make("none", None)
    student = make(paradigm, granularity)
    laudnet.load_backbone(student, laudnet.backbone_state_dict(teacher))
    config = TrainConfig(epochs=1, lr=0.05, target=0.5, budget_weight=5.0, bound_warmup=0.5, warmup_epochs=0, **QUIET)
    trainer = Trainer(student, config, steps_per_epoch=12, teacher=teacher)
    gates_before = [p.clone() for p in laudnet.gate_parameters(student)]
    steps = [trainer.step(images, labels) for _ in range(12)]
    losses, ce = [s["loss"] for s in steps], [s["ce"] for s in steps]
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    assert sum(ce[-3:]) / 3 < 0.9 * ce[0], ce
    assert any(not torch.equal(a, b) for a, b in zip(gates_before, laudnet.gate_parameters(student)))


def test_static_training_leaves_the_gates_alone():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial", num_classes=8, in_channels=1, input_size=16)
    gates = [p.clone() for p in laudnet.gate_parameters(model)]
    trainer = Trainer(model, TrainConfig(static=True, **QUIET), steps_per_epoch=2)
    metrics = trainer.step(torch.randn(4, 1, 16, 16), torch.arange(4))
    assert metrics["budget"] == 0 and metrics["flops_ratio"] == 1
    assert all(torch.equal(a, b) for a, b in zip(gates, laudnet.gate_parameters(model)))
    assert len(trainer.optimizer.param_groups) == 1


def test_gates_have_their_own_group_without_weight_decay():
    model = laudnet.create_model("cifar_resnet20", paradigm="channel", num_classes=8, in_channels=1, input_size=16)
    trainer = Trainer(model, TrainConfig(lr=0.1, gate_lr_mult=3.0, weight_decay=1e-4, **QUIET), steps_per_epoch=10)
    backbone, gates = trainer.optimizer.param_groups
    assert {id(p) for p in gates["params"]} == {id(p) for p in laudnet.gate_parameters(model)}
    assert gates["weight_decay"] == 0 and backbone["weight_decay"] == 1e-4
    assert gates["lr"] == pytest.approx(3 * backbone["lr"])


def test_warmup_then_cosine():
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [factor(0), factor(1), factor(2)] == [0.5, 1.0, 1.0]
    assert factor(6) == pytest.approx(0.5) and factor(10) == pytest.approx(0.0)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resume_after_a_crash_takes_the_same_steps(teacher, tmp_path, monkeypatch):
    spec = RunSpec(paradigm="spatial", granularity="4-2-1", teacher=str(teacher), **TINY)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, **QUIET)
    straight = train(spec, config, tmp_path / "straight")

    calls = {"n": 0}
    original = ClutteredObjects.__getitem__

    def crash_in_epoch_two(self, index):
        calls["n"] += 1
        if self.split == "train" and calls["n"] > 48 + 16 + 20:  # epoch 1, its validation, then part of epoch 2
            raise RuntimeError("simulated crash")
        return original(self, index)

    monkeypatch.setattr(ClutteredObjects, "__getitem__", crash_in_epoch_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(spec, config, tmp_path / "crashed")
    assert load_checkpoint(tmp_path / "crashed")["epoch"] == 1
    monkeypatch.setattr(ClutteredObjects, "__getitem__", original)

    with pytest.raises(ValueError, match="exists; pass --resume"):
        train(spec, config, tmp_path / "crashed")
    with pytest.raises(ValueError, match="differs in lr"):
        train(spec, TrainConfig(epochs=2, batch_size=16, lr=0.1, **QUIET), tmp_path / "crashed", resume=True)
    state = load_checkpoint(tmp_path / "crashed")  # as written before the setting existed: its default
    del state["config"]["distill_region"]
    save_checkpoint(tmp_path / "crashed" / "checkpoint.pt", state)
    resume(tmp_path / "crashed")

    # the resumed run logged exactly the steps of the uninterrupted one, and ends in the same state
    assert read_rows(tmp_path / "crashed" / "steps.csv") == read_rows(tmp_path / "straight" / "steps.csv")
    a, b = load_checkpoint(straight), load_checkpoint(tmp_path / "crashed")
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["history"][1]["val_accuracy"] == b["history"][1]["val_accuracy"]


def test_student_starts_from_the_teacher_and_checkpoints_rebuild(teacher, tmp_path):
    spec = RunSpec(paradigm="layer", teacher=str(teacher), **TINY)
    checkpoint = train(spec, TrainConfig(epochs=1, batch_size=16, lr=1e-9, warmup_epochs=0, **QUIET), tmp_path)
    student = model_from_checkpoint(checkpoint)
    static = model_from_checkpoint(teacher)
    # with a negligible learning rate the student's convolutions are still the teacher's
    assert torch.allclose(student.layer2[1].conv1.weight, static.layer2[1].conv1.weight, atol=1e-6)
    assert student.layer2[1].execution == "masked" and static.layer2[1].execution == "static"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    spec = RunSpec(paradigm="none", **TINY)
    config = TrainConfig(epochs=2, batch_size=16, static=True, **QUIET)
    steps = {"n": 0}
    original = Trainer.step

    def poisoned(self, images, labels):
        steps["n"] += 1
        if steps["n"] == 5:  # the second step of epoch 2
            images = images * float("nan")
        return original(self, images, labels)

    monkeypatch.setattr(Trainer, "step", poisoned)
    with pytest.raises(NonFiniteError, match="epoch 2: loss is nan at step 5.*last good checkpoint.*epoch 1"):
        train(spec, config, tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["state_dict"].values()
                                       if v.is_floating_point())


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="optimizer 'adam' is unknown; allowed: sgd, adamw"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="FLOPs target must be in \\(0, 1\\], got 1.5"):
        TrainConfig(target=1.5)
    with pytest.raises(ValueError, match="paradigm of stage 1 is 'spatail'"):
        RunSpec(paradigm="spatail", **TINY).build_model()
