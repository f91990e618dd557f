"""The command line: bad arguments give one clear line and exit code 2, never a traceback."""

import json
import subprocess
import sys

import pytest

from laudnet.cli import main


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "{tmp}/r", "--epochs", "0"], "laudnet: error: epochs must be at least 1, got 0"),
    (["train", "--out", "{tmp}/r", "--paradigm", "spatail"], "laudnet: error: paradigm of stage 1 is 'spatail'"),
    (["train", "--out", "{tmp}/r", "--target", "0"], "laudnet: error: FLOPs target must be in (0, 1], got 0.0"),
    (["train", "--out", "{tmp}/r", "--target", "0.5", "--max-rate", "0.4"],
     "laudnet: error: maximum activation rate 0.4 is below the FLOPs target 0.5"),
    (["train", "--out", "{tmp}/r", "--max-rate", "1.5"], "maximum activation rate must be a finite number in (0, 1]"),
    (["train", "--out", "{tmp}/r", "--optimizer", "adam"], "optimizer 'adam' is unknown; allowed: sgd, adamw"),
    (["train", "--out", "{tmp}/r", "--granularity", "100"], "granularity of stage 1 (spatial) is 100"),
    (["train"], "laudnet: error: give --out DIR for a new run, or --resume DIR"),
    (["train", "--resume", "{tmp}/none"], "laudnet: error: checkpoint {tmp}/none/checkpoint.pt does not exist"),
    (["train", "--out", "{tmp}/r", "--teacher", "{tmp}/t.pt"], "laudnet: error: checkpoint {tmp}/t.pt does not exist"),
    (["train", "--out", "{tmp}/r", "--dataset", "fashion-mnist", "--data", "{tmp}"], "Fashion-MNIST not found in {tmp}"),
    (["eval", "{tmp}/missing.pt"], "laudnet: error: checkpoint {tmp}/missing.pt does not exist"),
    (["eval", "{tmp}/garbage.pt"], "is not a readable checkpoint"),
    (["eval", "{tmp}/garbage.pt", "--hardware", "v100,p100"], "laudnet: error: unknown hardware 'p100'"),
    (["report", "{tmp}/eval.json"], "laudnet: error: {tmp}/eval.json does not exist; create it with `laudnet eval CKPT`"),
    (["demo", "--paradigm", "spatail", "--out", "{tmp}/d"], "laudnet: error: paradigm of stage 1 is 'spatail'"),
])
def test_library_errors_are_one_line_with_exit_code_2(argv, message, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["train", "--epochs", "two"], "invalid int value: 'two'"),
    (["eval", "x.pt", "--latency-batch", "1,0"], "expected positive integers separated by commas"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().err


def test_console_entry_point_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "laudnet", "eval", str(tmp_path / "nope.pt")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"laudnet: error: checkpoint {tmp_path / 'nope.pt'} does not exist"


def test_train_eval_report_from_the_command_line(tmp_path, capsys):
    data = ["--dataset", "cluttered", "--image-size", "16", "--train-size", "32", "--test-size", "8",
            "--batch-size", "16", "--epochs", "1", "--no-progress", "--no-tensorboard"]
    assert main(["train", "--static", "--out", str(tmp_path / "t"), *data]) == 0
    assert main(["train", "--teacher", str(tmp_path / "t" / "checkpoint.pt"), "--granularity", "8-4-4",
                 "--out", str(tmp_path / "s"), *data]) == 0
    assert main(["eval", str(tmp_path / "s"), "--latency-batch", "2", "--repeats", "2", "--hardware", "v100"]) == 0
    assert main(["eval", str(tmp_path / "t")]) == 0
    result = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert result["paradigm"] == "spatial-spatial-spatial" and result["test_samples"] == 8
    assert result["latency"][0]["batch"] == 2 and result["object"] is not None
    assert [(p["hardware"], p["batch"], p["calibrated"]) for p in result["predicted"]] == [("v100", 2, False)]
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "s"), "--out", str(tmp_path / "r"),
                 "--examples", "2"]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64") == 4  # accuracy/FLOPs, rates, overlay, decisions
    assert f"report: {tmp_path / 'r' / 'report.html'}" in capsys.readouterr().out
