"""`resviz train --nproc N` (resviz/train/launch.py, resviz/train/ranks.py): real torchrun launches of 2 CPU
processes (gloo) compared with one process on the same command line; the refusals made before any launch; a
run interrupted by SIGTERM to the launching process, resumed by the same command.

The run: an unnormalised ResNet-8 (width 8) on the built-in digits, 20 steps of batch 32 at lr 0.01. One step
of 2 processes equals one process's up to summation order (~1e-6); training amplifies that, fastest where a
normalisation divides by the near-zero variance of the digits' blank background (GroupNorm at lr 0.01: gradient
norms 9e-2 apart by step 10) or a ReLU flips (lr 0.1: 9e-3 by step 20). Here every value stays within 2e-6
(measured), so the tables are compared at rtol 1e-5 (docs/distributed.md, "What is exact and what is not")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import cli
from resviz.cli import main
from resviz.runfolder import read_status
from resviz.train.launch import without_nproc
from resviz.train.ranks import Ranks, check_nproc

RUN = "digits-resnet8-none-scA-w8-s0"
TIMING = ["seconds", "images_per_s"]  # wall-clock columns: never equal between two runs
RTOL = 1e-5


def train_args(data_root: str, out: Path) -> list[str]:
    return ["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8", "--norm", "none",
            "--steps", "20", "--batch-size", "32", "--lr", "0.01", "--log-every", "5", "--checkpoint-every", "5",
            "--eval-every", "10", "--record-every", "5", "--eval-batch-size", "400", "--no-progress", "--out",
            str(out)]


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory) -> dict[str, Path]:
    """The same run by one process (`--nproc 1`, in this process) and by two (`--nproc 2`, torchrun)."""
    base = tmp_path_factory.mktemp("ranks")
    assert main([*train_args(data_root, base / "one"), "--nproc", "1"]) == 0
    two = cli(*train_args(data_root, base / "two"), "--nproc", "2", timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count(f"{RUN}: done at step 20") == 1 and "Traceback" not in two.stderr  # rank 0's line
    return {"one": base / "one" / RUN, "two": base / "two" / RUN, "data_root": data_root}


def tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(folder / "metrics.parquet"), pd.read_parquet(folder / "stats.parquet")


def assert_same_tables(got: Path, want: Path, rtol: float) -> None:
    """The same rows and columns; numbers within rtol (the timing columns aside), everything else equal."""
    for g, w, key in zip(tables(got), tables(want), (["step"], ["step", "layer", "metric"])):
        assert list(g.columns) == list(w.columns) and len(g) == len(w) > 0
        g, w = g.sort_values(key).reset_index(drop=True), w.sort_values(key).reset_index(drop=True)
        numbers = [c for c in w.columns if w[c].dtype.kind == "f" and c not in TIMING]
        others = [c for c in w.columns if c not in numbers and c not in TIMING]
        pd.testing.assert_frame_equal(g[others], w[others])
        for c in numbers:
            np.testing.assert_allclose(g[c], w[c], rtol=rtol, atol=0, equal_nan=True, err_msg=c)


@pytest.mark.slow
def test_two_processes_record_the_one_process_run_in_the_same_folder_layout(runs, tmp_path):
    one, two = runs["one"], runs["two"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert read_status(two)["status"] == "done" and read_status(two)["step"] == 20
    assert_same_tables(two, one, RTOL)
    assert set(tables(two)[1]["metric"]) >= {"response_std", "branch_std", "act_grad_norm", "grad_norm",
                                             "response_std_eval"}
    assert main(["report", str(two.parent), "--out", str(tmp_path / "report"), "--formats", "html"]) == 0
    assert RUN in (tmp_path / "report" / "index.html").read_text()


@pytest.mark.slow
def test_sigterm_to_the_launcher_interrupts_every_rank_and_the_same_command_resumes(runs, tmp_path):
    """SIGTERM once rank 0 holds the folder (config.json written, the ranks setting up): passed on through
    torchrun, agreed at the first log boundary (step 5), saved there by rank 0; the command again resumes to the
    uninterrupted two-process tables, exactly."""
    args = train_args(runs["data_root"], tmp_path)
    folder = tmp_path / RUN
    launcher = subprocess.Popen([sys.executable, "-m", "resviz.cli", *args, "--nproc", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while not (folder / "config.json").exists() and launcher.poll() is None:
            pass  # a tight wait: the ranks set up for about a second from here
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    status = read_status(folder)
    assert launcher.returncode == 143, err
    assert status["status"] == "interrupted" and 0 < status["step"] < 20 and status["signal"] == signal.SIGTERM
    assert err.strip() == (f"resviz: {RUN}: interrupted by SIGTERM at step {status['step']}, saved; run the same "
                           "command again to resume")  # rank 0's line alone: no torchrun traceback, no rank 1
    again = cli(*args, "--nproc", "2", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_tables(folder, runs["two"], rtol=0)


def test_a_batch_that_does_not_split_evenly_or_a_bad_nproc_is_refused_before_any_launch(data_root, tmp_path,
                                                                                       capsys):
    args = train_args(data_root, tmp_path)
    for nproc, message in (("3", "resviz: error: --batch-size=32 cannot be split evenly over --nproc=3 processes; "
                                 "use a batch size divisible by 3 (e.g. 33) or --nproc 2"),
                           ("0", "resviz: error: --nproc=0 must be a whole number of processes, 1 or more"),
                           ("two", "resviz: error: --nproc='two' must be an integer")):
        assert main([*args, "--nproc", nproc]) == 2
        assert capsys.readouterr().err.strip() == message
    assert not tmp_path.joinpath(RUN).exists()  # nothing launched, nothing written


def test_the_ranks_run_the_command_line_without_nproc():
    assert without_nproc(["train", "--nproc", "2", "--steps", "5"]) == ["train", "--steps", "5"]
    assert without_nproc(["train", "--nproc=4", "--npro", "3", "--norm", "none"]) == ["train", "--norm", "none"]
    assert check_nproc(None, 7) == 1 and check_nproc(4, 128) == 4


def test_one_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Ranks.from_environment() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert Ranks.from_environment() is None
    alone = Ranks()
    assert alone.writes and not alone.many and alone.first(lambda: 5) == 5 and alone.in_turn(lambda: 6) == 6
