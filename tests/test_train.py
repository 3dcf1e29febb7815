"""Training runs: recipe, run folders, resume after SIGKILL, divergence, reproducibility, bad input."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from resviz import runfolder, runs, schema
from resviz.cli import main
from resviz.train import TrainConfig, learning_rate, train
from helpers import TINY, cli, tiny

def test_paper_recipe_defaults():
    c = TrainConfig()
    assert (c.lr, c.momentum, c.weight_decay, c.batch_size, c.steps) == (0.1, 0.9, 1e-4, 128, 64_000)
    assert c.scaled_milestones == (32_000, 48_000)
    assert c.augment and c.warmup == "auto"
    assert not c.warmup_enabled and dataclasses.replace(c, depth=110).warmup_enabled
    assert c.steps // c.record_every >= 1_000  # a full run records at least 1,000 points


def test_milestones_scale_with_steps():
    c = TrainConfig(steps=2000)
    assert c.scaled_milestones == (1000, 1500)
    assert [learning_rate(c, s, None) for s in (0, 999, 1000, 1499, 1500, 1999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_warmup_lr_until_released():
    c = TrainConfig(depth=110)
    assert learning_rate(c, 0, 400) == 0.01 and learning_rate(c, 399, 400) == 0.01
    assert learning_rate(c, 400, 400) == 0.1
    assert learning_rate(c, 50, 40) == 0.1  # released early when training error fell below 80 %


def test_run_folder_and_tables(tmp_path, data_root):
    result = train(tiny(data_root), tmp_path)
    folder = tmp_path / TINY.run_id
    assert result.status == "done" and result.step == 30 and result.folder == folder
    for name in ("config.json", "status.json", "metrics.parquet", "stats.parquet", "checkpoint.pt"):
        assert (folder / name).is_file(), name
    assert not list(folder.glob("*.tmp")), "temporary files left behind"
    assert runfolder.read_status(folder)["status"] == "done"
    metrics = schema.validate_train(pd.read_parquet(folder / "metrics.parquet"))
    assert metrics["step"].tolist() == [10, 20, 30]
    assert metrics["test_error"].notna().all() and (metrics["train_error"].between(0, 1)).all()
    stats = schema.validate(pd.read_parquet(folder / "stats.parquet"))
    recorded = stats[stats["metric"].isin(schema.RECORDER_METRICS)]
    assert sorted(recorded["step"].unique()) == [0, 5, 10, 15, 20, 25]
    held_out = stats[stats["metric"] == "response_std_eval"]  # Fig. 7 in eval mode: at init and each evaluation
    assert sorted(held_out["step"].unique()) == [0, 10, 20, 30]
    assert set(held_out["layer"].astype(str)) == set(stats.loc[stats["metric"] == "response_std", "layer"].astype(str))
    assert metrics["clean_train_error"].between(0, 1).all()  # eval mode, un-augmented training images
    assert {"response_std", "branch_std", "skip_std", "grad_norm"} <= set(stats["metric"].astype(str))
    assert (stats["run_id"].astype(str) == TINY.run_id).all()

    rs = runs.load(tmp_path)
    assert len(rs) == 1 and rs.status["status"].tolist() == ["done"]
    assert len(rs.metrics) == 3 and len(rs.stats) == len(stats)
    assert rs.metrics["arch"].unique().tolist() == ["resnet"] and int(rs.metrics["depth"].iloc[0]) == 8


def test_evaluate_a_run_folder(tmp_path, data_root, capsys):
    result = train(tiny(data_root), tmp_path)
    assert main(["evaluate", "--checkpoint", str(result.folder), "--dataset", "digits", "--root", data_root,
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == 360
    assert got["accuracy"] == pytest.approx(1 - result.test_error, abs=1e-6)  # the run's own last evaluation


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_same_seed_same_loss_curve(tmp_path, data_root):
    a = train(tiny(data_root), tmp_path / "a")
    b = train(tiny(data_root), tmp_path / "b")
    la = pd.read_parquet(a.folder / "metrics.parquet")["loss"]
    lb = pd.read_parquet(b.folder / "metrics.parquet")["loss"]
    assert la.tolist() == lb.tolist()
    c = train(tiny(data_root, seed=1), tmp_path / "c")
    assert pd.read_parquet(c.folder / "metrics.parquet")["loss"].tolist() != la.tolist()


def test_finished_run_is_not_trained_again(tmp_path, data_root):
    train(tiny(data_root), tmp_path)
    folder = tmp_path / TINY.run_id
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = train(tiny(data_root), tmp_path)
    assert again.status == "done"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, data_root):
    args = ["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8",
            "--steps", "80", "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10",
            "--eval-every", "40", "--record-every", "5", "--no-progress"]
    full = cli(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "resviz.cli", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    folder = out / TINY.run_id
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:  # kill once a checkpoint beyond step 0 exists
        status = runfolder.read_status(folder) if folder.exists() else {}
        if status.get("step", 0) >= 20 + (os.getpid() % 3) * 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if runfolder.read_status(folder)["status"] == "done":
        pytest.skip("the run finished before it could be killed")
    resumed = cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    a = runs.load(tmp_path / "full" / TINY.run_id)
    b = runs.load(folder)
    assert b.status["status"].tolist() == ["done"] and b.status["step"].tolist() == [80]
    assert len(b.stats) == len(a.stats) and len(b.metrics) == len(a.metrics)
    assert b.metrics["step"].tolist() == a.metrics["step"].tolist()
    schema.validate(b.stats)
    key = ["step", "layer", "metric"]
    merged = a.stats.astype({"layer": str, "metric": str}).merge(
        b.stats.astype({"layer": str, "metric": str}), on=key, suffixes=("_a", "_b"))
    assert len(merged) == len(a.stats)  # the same (step, layer, metric) rows, none twice


def test_divergence_is_recorded_not_raised(tmp_path, data_root):
    result = train(tiny(data_root, norm="none", lr=50.0, steps=40), tmp_path)
    assert result.status == "diverged"
    status = runfolder.read_status(result.folder)
    assert status["status"] == "diverged" and "loss became" in status["reason"]
    assert status["step"] <= 40
    metrics = pd.read_parquet(result.folder / "metrics.parquet")
    assert not math.isfinite(metrics["loss"].iloc[-1])  # the non-finite row is kept, never dropped
    assert all(math.isfinite(v) for v in metrics["loss"].iloc[:-1])
    assert (result.folder / "stats.parquet").is_file()


def test_refuses_resume_with_other_config(tmp_path, data_root, capsys):
    train(tiny(data_root, steps=10), tmp_path)
    code = main(["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8",
                 "--steps", "20", "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10",
                 "--eval-every", "10", "--record-every", "5", "--eval-batch-size", "400", "--no-progress",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "with a different config (steps: 10 -> 20)" in err


def test_unwritable_out(tmp_path, data_root, capsys):
    if os.geteuid() == 0:
        target = "/proc/resviz-runs"  # root may write anywhere a mode allows; /proc refuses everyone
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked)
    code = main(["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--steps", "10",
                 "--batch-size", "32", "--no-progress", "--out", target])
    err = capsys.readouterr().err
    assert code == 2 and "choose a writable --out" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(capsys):
    assert main(["train", "--device", "cuda", "--dataset", "digits"]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_ctrl_c_checkpoints_and_marks_interrupted(tmp_path, data_root):
    args = ["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8",
            "--steps", "100000", "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "1000",
            "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "resviz.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    folder = tmp_path / "digits-resnet8-batch-scA-w8-s0"
    deadline = time.time() + 60
    while time.time() < deadline and not (folder / "metrics.parquet").exists():
        if (folder / "status.json").exists():  # the loop has started
            time.sleep(1.0)
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    status = runfolder.read_status(folder)
    assert status["status"] == "interrupted" and status["step"] > 0
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == status["step"]
