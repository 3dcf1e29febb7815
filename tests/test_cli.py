"""The command line: the parser, config files and flags, one-line errors (exit 2) for a user's mistakes, and
tracebacks kept for bugs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from resviz import cli
from resviz.cli import build_parser, main
from resviz.errors import UserError
from resviz.train import TrainConfig
from helpers import cli as run_cli  # the command line in a subprocess


def test_parser_has_every_command_and_every_config_flag(capsys):
    parser = build_parser()
    commands = ("train", "sweep", "demo", "evaluate", "report", "invariance", "lesion", "export-tb", "export-wandb")
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "--warmup-steps" in text and "--no-augment" in text and "--record-metrics" in text
    assert "peak learning rate (default: 0.1)" in re.sub(r"\s+", " ", text)  # help read from the field comments
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([])  # a command is required
    assert exit_info.value.code == 2


def test_flags_override_the_config_file_typed(tmp_path, data_root):
    cfg = tmp_path / "base.json"
    cfg.write_text(json.dumps({"dataset": "digits", "root": data_root, "depth": 14, "width": 4, "lr": 0.05,
                               "milestones": [3, 4], "batch_size": 32, "log_every": 2, "eval_every": 4,
                               "checkpoint_every": 4, "progress": False}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--steps", "4", "--milestones",
                 "2, 3", "--branch-init", "none", "--train-subset", "64", "--no-augment", "--record-metrics",
                 "response_std,grad_norm", "--lr", "1e-2", "--depth", "8"]) == 0
    (written,) = (tmp_path / "r").glob("*/config.json")
    saved = {k: v for k, v in json.loads(written.read_text()).items() if k not in ("versions", "run_id")}
    assert TrainConfig.from_dict(saved) == TrainConfig(
        dataset="digits", root=data_root, depth=8, width=4, lr=0.01, steps=4, milestones=(2, 3), batch_size=32,
        log_every=2, eval_every=4, checkpoint_every=4, progress=False, branch_init=None, train_subset=64,
        augment=False, record_metrics=("response_std", "grad_norm"))


def test_sweep_lists_are_checked(capsys):
    assert main(["sweep", "--depths", ","]) == 2
    assert "resviz: error: --depths ',' is an empty list" in capsys.readouterr().err
    assert main(["sweep", "--depths", "8,x"]) == 2
    assert "resviz: error: --depths='x' must be an integer" in capsys.readouterr().err


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_cli_train_and_sweep_summary(tmp_path, data_root):
    r = run_cli("sweep", "--dataset", "digits", "--root", data_root, "--depths", "8", "--arch", "plain,resnet",
            "--width", "8", "--steps", "10", "--batch-size", "32", "--log-every", "5", "--checkpoint-every", "10",
            "--eval-every", "10", "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "digits-plain8-batch-w8-s0" in r.stdout and "digits-resnet8-batch-scA-w8-s0" in r.stdout
    assert "test_error" in r.stdout and "done" in r.stdout


def test_config_file(tmp_path, data_root):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"dataset: digits\nroot: {data_root}\ndepth: 8\nwidth: 8\nsteps: 10\nbatch_size: 32\n"
                   "log_every: 5\ncheckpoint_every: 10\neval_every: 10\nprogress: false\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 0
    config = json.loads((tmp_path / "r" / "digits-resnet8-batch-scA-w8-s0" / "config.json").read_text())
    assert config["steps"] == 10 and config["batch_size"] == 32


@pytest.mark.parametrize(
    "args,message",
    [
        (["--depth", "21"], r"depth=21 must be 6n\+2"),
        (["--norm", "instance"], r"norm='instance' is unknown"),
        (["--shortcut", "C"], r"shortcut='C' is unknown"),
        (["--dataset", "mnist"], r"mnist"),
        (["--steps", "0"], r"steps=0 must be a positive integer"),
        (["--steps", "ten"], r"--steps='ten' must be an integer"),
        (["--batch-size", "5000"], r"batch_size=5000 is larger than the training set \(1437 images\)"),
    ],
)
def test_bad_train_input(tmp_path, data_root, capsys, args, message):
    base = ["train", "--dataset", "digits", "--root", data_root, "--steps", "10", "--out", str(tmp_path)]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("resviz: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_bad_config_files(tmp_path, capsys):
    unknown = tmp_path / "a.json"
    unknown.write_text('{"depth": 8, "learning_rate": 0.1}')
    assert main(["train", "--config", str(unknown)]) == 2
    assert "unknown config key(s) ['learning_rate']" in capsys.readouterr().err
    wrong = tmp_path / "b.yaml"
    wrong.write_text("depth: eight\n")
    assert main(["train", "--config", str(wrong)]) == 2
    assert "config key 'depth' must be an integer, got 'eight'" in capsys.readouterr().err



def test_a_download_failure_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESVIZ_CIFAR10_URL", (tmp_path / "nowhere" / "cifar-10-python.tar.gz").as_uri())
    assert main(["train", "--dataset", "cifar10", "--root", str(tmp_path / "data"), "--steps", "10",
                 "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resviz: error: could not download CIFAR-10 from ") and err.count("\n") == 1


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, data_root, monkeypatch, capsys):
    def fail(config, out, run_id=None, ranks=None):
        raise UserError("the fix is named here\nsecond line")

    monkeypatch.setattr(cli, "train", fail)  # the function `resviz train` calls
    assert main(["train", "--dataset", "digits", "--root", data_root, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "resviz: error: the fix is named here\n"

    def bug(config, out, run_id=None, ranks=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(cli, "train", bug)
    with pytest.raises(RuntimeError, match="illegal memory access"):  # not turned into exit 2
        main(["train", "--dataset", "digits", "--root", data_root, "--out", str(tmp_path)])


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_a_bug_prints_its_traceback_in_a_subprocess(tmp_path):
    code = ("import sys, resviz.train\n"
            "def bug(config, out, run_id=None, ranks=None):\n"
            "    raise RuntimeError('an internal error')\n"
            "resviz.train.train = bug\n"
            "from resviz.cli import main\n"
            f"sys.exit(main(['train', '--dataset', 'digits', '--out', {str(tmp_path)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: an internal error" in r.stderr
    assert "resviz: error:" not in r.stderr


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_debug_env_shows_the_traceback_of_a_user_error(tmp_path):
    r = run_cli("train", "--depth", "21", "--out", str(tmp_path), env={"RESVIZ_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "depth=21 must be 6n+2" in r.stderr
