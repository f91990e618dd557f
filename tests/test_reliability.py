"""Failure classes a new or hostile user meets: results lost after the work, silent wrong
runs, raw tracebacks for mistakes the tool can name, API errors that do not name the
argument, sparse execution outside ``torch.no_grad()``. Each is refused before the work
starts, or stops the run without saving anything wrong, with one line naming the cause."""

import logging
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision
from PIL import Image

import laudnet
from laudnet import evaluate as evaluate_module
from laudnet.cli import main
from laudnet.errors import BusyError, CheckpointError, DataError, DeviceError, NonFiniteError, OutputError
from laudnet.outputs import check_directory, check_file, claim
from laudnet.train import loop
from laudnet.checkpoint import RunSpec, load_checkpoint
from laudnet.data import build_datasets, train_loader
from laudnet.distributed import resolve_device
from laudnet.train.loop import Trainer, TrainConfig, train

TINY = dict(dataset="cluttered", image_size=16, train_size=32, test_size=16)
QUIET = dict(tensorboard=False, progress_bar=False, log_every=1)
TINY_ARGS = ["--image-size", "16", "--train-size", "32", "--test-size", "16", "--batch-size", "16",
             "--no-progress", "--no-tensorboard"]


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line(err: str, *parts: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A static cifar_resnet20 teacher on tiny cluttered data (one epoch)."""
    out = tmp_path_factory.mktemp("teacher")
    return train(RunSpec(paradigm="none", **TINY), TrainConfig(epochs=1, batch_size=16, static=True, **QUIET), out)


# ----------------------------------------------------------------- output locations
def test_output_checks_name_the_problem(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="--out .*a_file is a file; give a directory"):
        check_directory(a_file)
    with pytest.raises(OutputError, match="cannot be created: .*a_file is a file, not a directory"):
        check_directory(a_file / "sub" / "deeper")
    with pytest.raises(OutputError, match="is a directory; give a file name"):
        check_file(tmp_path)
    assert check_file(tmp_path / "new" / "result.json") == tmp_path / "new" / "result.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot be written: .*locked: Permission denied"):
            check_directory(locked / "run")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_directory_that_refuses_files_is_refused_even_to_root():
    with pytest.raises(OutputError, match="cannot be written: /proc/self"):
        check_file("/proc/self/result.json")


def test_claim_removes_only_the_directory_it_created_when_the_work_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with claim(tmp_path / "fresh"):
            raise RuntimeError("failed validation")
    assert not (tmp_path / "fresh").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with claim(existing):
            raise RuntimeError("failed validation")
    assert existing.is_dir()
    with claim(tmp_path / "done") as out:
        (out / "result.txt").write_text("kept")
    assert (tmp_path / "done" / "result.txt").read_text() == "kept"


def test_a_claimed_directory_is_refused_to_a_second_run_in_this_process(tmp_path):
    with claim(tmp_path / "run"):
        with pytest.raises(BusyError, match=rf"in use by another run \(pid {os.getpid()} on .*\)"):
            with claim(tmp_path / "run"):
                pass
        with pytest.raises(BusyError):
            train(RunSpec(paradigm="none", **TINY), TrainConfig(epochs=1, static=True, **QUIET), tmp_path / "run")
    with claim(tmp_path / "run"):  # released when the first run ended
        pass


def test_a_run_directory_held_by_another_process_is_refused(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from laudnet.outputs import claim
        with claim({str(tmp_path / 'run')!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(["train", "--static", "--epochs", "1", "--out", tmp_path / "run", *TINY_ARGS], capsys)
        assert code == 2
        assert_one_line(err, f"is in use by another run (pid {holder.pid} on", "choose another run directory")
        assert not (tmp_path / "run" / "checkpoint.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves no stale lock
    code, _ = run_cli(["train", "--static", "--epochs", "1", "--out", tmp_path / "run", *TINY_ARGS], capsys)
    assert code == 0 and (tmp_path / "run" / "checkpoint.pt").is_file()


def test_eval_refuses_an_unusable_output_before_evaluating(teacher, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation ran although its output cannot be written")

    monkeypatch.setattr(evaluate_module, "evaluate", no_work)
    (tmp_path / "a_file").write_text("x")
    code, err = run_cli(["eval", teacher, "--out", tmp_path / "a_file"], capsys)
    assert code == 2
    assert_one_line(err, "a_file is a file; give a directory")
    with claim(teacher.parent):  # the run directory held, e.g. by its training run
        code, err = run_cli(["eval", teacher], capsys)
    assert code == 2
    assert_one_line(err, "is in use by another run")


def test_search_refuses_a_directory_as_its_output_before_searching(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(laudnet.cli.search, "search", lambda *a, **k: pytest.fail("searched"))
    code, err = run_cli(["search", "--out", tmp_path], capsys)
    assert code == 2
    assert_one_line(err, "is a directory; give a file name")


@pytest.mark.parametrize("argv", [
    ["train", "--static", "--model", "no_such_model", "--out", "{out}"],
    ["train", "--paradigm", "spatial", "--granularity", "100", "--out", "{out}"],
    ["demo", "--paradigm", "spatail", "--out", "{out}"],
    ["report", "{tmp}/missing/eval.json", "--out", "{out}"],
    ["bench", "--arch", "no_such_net", "--out", "{out}"],
    ["latency", "validate", "--hardware", "no_such_profile", "--out", "{out}"],
])
def test_failed_validation_leaves_no_output_directory(argv, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli([a.format(out=out, tmp=tmp_path) for a in argv], capsys)
    assert code == 2, err
    assert_one_line(err, "laudnet: error:")
    assert not out.exists()


# ----------------------------------------------------------------- silent wrong runs
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_settings_are_refused(value, tmp_path, capsys):
    with pytest.raises(ValueError, match="lr must be a finite number"):
        TrainConfig(lr=value)
    with pytest.raises(ValueError, match="weight_decay must be a finite number"):
        TrainConfig(weight_decay=value)
    code, err = run_cli(["train", "--static", "--out", tmp_path / "r", f"--lr={value}"], capsys)
    assert code == 2
    assert_one_line(err, f"lr must be a finite number, got {value}")
    assert not (tmp_path / "r").exists()


def test_resume_refuses_settings_it_would_ignore(teacher, tmp_path, capsys):
    code, err = run_cli(["train", "--resume", teacher.parent, "--epochs", "3", "--lr", "0.5"], capsys)
    assert code == 2
    assert_one_line(err, "--resume continues the run with its stored settings; --epochs, --lr cannot change them")


def test_settings_of_the_wrong_kind_are_refused():
    with pytest.raises(TypeError, match="epochs must be an integer, got '3'"):
        TrainConfig(epochs="3")
    with pytest.raises(TypeError, match="bf16 must be True or False"):
        TrainConfig(bf16="yes")


def _poison_after_step(monkeypatch, step: int) -> None:
    """Make the optimizer's update of ``step`` turn one weight infinite (what a too large
    learning rate does on a sharp batch), so that the loss of that step was finite."""
    build = loop.build_optimizer

    def build_poisoned(model, config):
        optimizer = build(model, config)
        count = {"n": 0}

        def poison(optimizer, args, kwargs):
            count["n"] += 1
            if count["n"] == step:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("inf")

        optimizer.register_step_post_hook(poison)
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", build_poisoned)


def test_weights_blown_up_on_the_last_step_of_an_epoch_are_never_saved(tmp_path, monkeypatch):
    spec = RunSpec(paradigm="none", **TINY)
    config = TrainConfig(epochs=2, batch_size=16, static=True, **QUIET)  # two steps per epoch
    _poison_after_step(monkeypatch, step=4)  # the last step of epoch 2
    with pytest.raises(NonFiniteError, match="epoch 2: weights became non-finite in the update of step 4.*"
                                             "last good checkpoint.*epoch 1"):
        train(spec, config, tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_non_finite_validation_metrics_are_never_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", lambda self, loader: {"val_accuracy": float("nan"),
                                                                  "val_flops_ratio": 1.0})
    with pytest.raises(NonFiniteError, match="epoch 1: the epoch's val_accuracy not finite; no checkpoint"):
        train(RunSpec(paradigm="none", **TINY), TrainConfig(epochs=1, batch_size=16, static=True, **QUIET), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_cli_reports_a_blown_up_run_with_exit_code_1(tmp_path, capsys, monkeypatch):
    _poison_after_step(monkeypatch, step=1)
    code, err = run_cli(["train", "--static", "--epochs", "1", "--out", tmp_path / "r", *TINY_ARGS], capsys)
    assert code == 1
    assert_one_line(err, "weights became non-finite", "no checkpoint was written yet")


def test_a_teacher_of_another_architecture_is_reported(teacher, tmp_path, caplog):
    spec = RunSpec(model="cifar_resnet32", paradigm="spatial", teacher=str(teacher), **TINY)
    config = TrainConfig(epochs=1, batch_size=16, **QUIET)
    with caplog.at_level(logging.WARNING, logger="laudnet"):
        train(spec, config, tmp_path / "other")
    assert ("the teacher" in caplog.text and "is a cifar_resnet20, the student a cifar_resnet32: the student "
            "starts from random weights" in caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="laudnet"):
        train(RunSpec(paradigm="spatial", teacher=str(teacher), **TINY), config, tmp_path / "same")
    assert "random weights" not in caplog.text


def test_the_cli_prints_the_teacher_warning_on_one_line(teacher, tmp_path, capsys):
    code, err = run_cli(["train", "--model", "cifar_resnet32", "--teacher", teacher, "--epochs", "1",
                         "--out", tmp_path / "s", *TINY_ARGS], capsys)
    assert code == 0
    assert_one_line(err, "laudnet: warning: the teacher", "starts from random weights")


# ----------------------------------------------------------------- known failures: one line, exit 2
@pytest.mark.parametrize("device, message", [
    ("banana", "device 'banana' is unknown; allowed: cpu, cuda, cuda:N, mps"),
    ("cuda:7", "device 'cuda:7' asked for, but"),
])
def test_devices_that_are_not_here_are_named(device, message, tmp_path, capsys):
    with pytest.raises(DeviceError, match=message.replace("(", r"\(")):
        resolve_device(device)
    code, err = run_cli(["train", "--static", "--device", device, "--out", tmp_path / "r", *TINY_ARGS], capsys)
    assert code == 2
    assert_one_line(err, message)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_named():
    with pytest.raises(DeviceError, match="no CUDA GPU is usable on this machine; use cpu"):
        resolve_device("cuda")


def _image_folder(root, bad: bool):
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = torch.randint(0, 255, (20, 20, 3), dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    if bad:
        (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 these bytes are not a JPEG")
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_image_is_named(workers, tmp_path):
    splits = build_datasets("imagefolder", _image_folder(tmp_path, bad=True), image_size=16)
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):
        for _ in train_loader(splits.train, 5, workers=workers):
            pass


def test_the_cli_names_an_undecodable_image_on_one_line(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", bad=True)
    code, err = run_cli(["train", "--static", "--dataset", "imagefolder", "--data", data, "--model", "resnet18",
                         "--image-size", "16", "--batch-size", "5", "--epochs", "1", "--workers", "1",
                         "--no-progress", "--no-tensorboard", "--out", tmp_path / "r"], capsys)
    assert code == 2
    assert_one_line(err, "laudnet: error: cannot decode image", "broken.jpg", "remove or replace it")


def test_a_checkpoint_that_does_not_fit_is_named(teacher, tmp_path, capsys):
    state = torch.load(teacher, weights_only=True)
    state["spec"]["model"] = "cifar_resnet32"  # another architecture's name on these weights
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match="do not fit DynamicResNet: missing layer1.3"):
        loop.model_from_checkpoint(tmp_path / "renamed.pt")
    code, err = run_cli(["eval", tmp_path / "renamed.pt", "--out", tmp_path / "e"], capsys)
    assert code == 2
    assert_one_line(err, "do not fit DynamicResNet", "another architecture, number of classes or laudnet version")
    state = torch.load(teacher, weights_only=True)
    state["state_dict"]["fc.weight"] = state["state_dict"]["fc.weight"][:3]
    torch.save(state, tmp_path / "cut.pt")
    code, err = run_cli(["eval", tmp_path / "cut.pt", "--out", tmp_path / "e"], capsys)
    assert code == 2
    assert_one_line(err, "shapes differ: fc.weight (3, 64) vs (8, 64)")
    assert not (tmp_path / "e").exists()


def test_unexpected_exceptions_keep_their_traceback():
    def bug(args):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _main_with_run(["report", "x.json"], bug)


def _main_with_run(argv, run):
    """``main`` with the subcommand's ``run`` replaced (argparse captured the original)."""
    parser = laudnet.cli.build_parser()
    original = parser.parse_args

    def parse(args=None):
        namespace = original(args)
        namespace.run = run
        return namespace

    parser.parse_args = parse
    build = laudnet.cli.build_parser
    laudnet.cli.build_parser = lambda: parser
    try:
        return main(argv)
    finally:
        laudnet.cli.build_parser = build


def test_os_errors_without_a_path_keep_their_traceback():
    def system_failure(args):
        raise OSError("a failure of the system, not of a path the user gave")

    with pytest.raises(OSError):
        _main_with_run(["report", "x.json"], system_failure)


def test_os_errors_on_a_path_are_one_line(capsys):
    def write_denied(args):
        raise PermissionError(13, "Permission denied", "/some/out/eval.json")

    assert _main_with_run(["report", "x.json"], write_denied) == 2
    assert_one_line(capsys.readouterr().err, "laudnet: error: /some/out/eval.json: Permission denied")


# ----------------------------------------------------------------- API arguments
MODEL = laudnet.create_model("cifar_resnet20", paradigm="spatial")


@pytest.mark.parametrize("call, error, message", [
    (lambda: laudnet.create_model("resnet18", paradigm=None), TypeError, "paradigm must be .* got None"),
    (lambda: laudnet.create_model("resnet18", num_classes=-3), ValueError, "num_classes must be at least 1, got -3"),
    (lambda: laudnet.create_model("regnet_y_400mf", num_classes=2.5), TypeError, "num_classes must be an integer"),
    (lambda: laudnet.create_model("mobilenet_v2", input_size="224"), TypeError, "input_size must be an integer"),
    (lambda: laudnet.create_model("resnet18", gate_scale="yes"), TypeError, "gate_scale must be True or False"),
    (lambda: laudnet.create_model("resnet18", granularity=2.5), TypeError, "granularity must be a positive integer"),
    (lambda: laudnet.convert(torchvision.models.resnet18(), paradigm=None), TypeError, "paradigm must be"),
    (lambda: laudnet.set_decisions(MODEL, rate="0.5"), TypeError, r"rate must be a number in \[0, 1\], got '0.5'"),
    (lambda: laudnet.set_decisions(MODEL, rate=1.5), ValueError, r"rate must be a finite number in \[0, 1\], got 1.5"),
    (lambda: laudnet.set_decisions(MODEL, rate=0.5, seed="a"), TypeError, "seed must be an integer"),
    (lambda: laudnet.set_execution(MODEL, None), ValueError, "execution mode None is unknown; allowed"),
    (lambda: laudnet.predict_latency(MODEL, hardware=None), TypeError, "hardware must be a profile name"),
    (lambda: laudnet.predict_latency(MODEL, "v100", rates="0.5"), TypeError, "activation rate must be a number"),
    (lambda: laudnet.predict_latency(MODEL, "v100", input_size=-3), ValueError, "input size must be a positive"),
    (lambda: laudnet.search(hardware=None), TypeError, "hardware must be a profile name"),
    (lambda: laudnet.search(batch_size="8"), ValueError, "batch size must be a positive integer, got '8'"),
    (lambda: laudnet.static_macs(MODEL, None), TypeError, r"input_shape must be \(C, H, W\), got None"),
    (lambda: laudnet.static_macs(MODEL, (3, -1, 8)), ValueError, "input_shape height must be at least 1"),
    (lambda: laudnet.flops_budget_loss(MODEL, target="0.5"), TypeError, "FLOPs target must be a number"),
    (lambda: TrainConfig(target=math.inf), ValueError, "target must be a finite number"),
    (lambda: train(RunSpec(), TrainConfig(), None), TypeError, "run directory must be a path, got None"),
])
def test_api_errors_name_the_argument_and_what_is_allowed(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------- sparse execution outside no_grad
def test_sparse_execution_needs_no_no_grad_and_builds_no_graph():
    model = laudnet.create_model("cifar_resnet20", paradigm="spatial", granularity="4").eval()
    laudnet.set_decisions(model, rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = laudnet.set_execution(model, "masked")(x)
    out = laudnet.set_execution(model, "sparse")(x)  # autograd enabled
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert not out.requires_grad


@pytest.mark.parametrize("backend", ["aten", "onednn"])
@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_sparse_execution_under_bfloat16_autocast_computes_in_float32(paradigm, backend):
    model = laudnet.create_model("cifar_resnet20", paradigm=paradigm, granularity=None if paradigm == "layer" else "4")
    laudnet.set_decisions(model.eval(), rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = laudnet.set_execution(model, "masked")(x)
    laudnet.set_execution(model, "sparse")
    block = model.layer2[1]
    block_input = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        block_reference = block(block_input)
    with laudnet.sparse.tuning.forced_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        sparse = model(x)
        block_out = block(block_input.bfloat16())  # what an autocast layer before it hands over
    assert sparse.dtype == torch.float32 and block_out.dtype == torch.float32
    torch.testing.assert_close(sparse, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(block_out, block_reference, rtol=2e-2, atol=2e-2)  # the input was rounded


# ----------------------------------------------------------------- what `rate` means for layer+X
@pytest.mark.parametrize("paradigm", ["layer+spatial", "layer+channel"])
def test_set_decisions_rate_is_the_block_rate_in_layer_x_blocks(paradigm):
    model = laudnet.create_model("cifar_resnet20", paradigm=paradigm, granularity="2").eval()
    laudnet.set_decisions(model, rate=0.36)
    with torch.no_grad():
        model(torch.randn(256, 3, 32, 32))
    rates = laudnet.stats(model).mean_rates
    assert abs(sum(rates.values()) / len(rates) - 0.36) < 0.05, rates
