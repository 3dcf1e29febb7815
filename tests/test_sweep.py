"""Sweeps: grid expansion, skipping finished runs, resuming cut ones, worker processes, the summary text."""
from __future__ import annotations

import pandas as pd
import pytest

from resviz import runfolder
from resviz.sweeps import format_summary, grid, run_sweep
from resviz.train import train
from resviz.train.folder import prepare_folder
from helpers import TINY, tiny


def test_grid_expands_every_combination_in_order():
    configs = grid(TINY, depths=(8, 14), archs=("plain", "resnet"), seeds=(0, 1))
    assert [(c.depth, c.arch, c.seed) for c in configs] == [
        (8, "plain", 0), (8, "plain", 1), (8, "resnet", 0), (8, "resnet", 1),
        (14, "plain", 0), (14, "plain", 1), (14, "resnet", 0), (14, "resnet", 1),
    ]
    assert len({c.run_id for c in configs}) == 8
    assert all(c.width == TINY.width and c.steps == TINY.steps for c in configs)  # None keeps base's value


def test_grid_plain_nets_ignore_shortcuts_and_none_clears_branch_init():
    configs = grid(TINY, archs=("plain", "resnet"), shortcuts=("A", "B"))
    assert [(c.arch, c.shortcut) for c in configs] == [("plain", "A"), ("resnet", "A"), ("resnet", "B")]
    inits = grid(TINY, branch_inits=("none", "rezero"))
    assert [c.branch_init for c in inits] == [None, "rezero"]
    assert grid(TINY) == [TINY]


def test_grid_refuses_invalid_values():
    with pytest.raises(ValueError, match=r"depth=21 must be 6n\+2"):
        grid(TINY, depths=(8, 21))


def test_sweep_skips_finished_runs(tmp_path, data_root):
    configs = grid(tiny(data_root, steps=10, checkpoint_every=10), depths=(8,), archs=("plain", "resnet"))
    assert [c.arch for c in configs] == ["plain", "resnet"]
    first = run_sweep(configs, tmp_path, progress=False)
    assert first["status"].tolist() == ["done", "done"]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    second = run_sweep(configs, tmp_path, progress=False)
    assert second["status"].tolist() == ["done", "done"]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_sweep_resumes_a_cut_run_and_retries_a_failed_one(tmp_path, data_root):
    configs = grid(tiny(data_root, steps=20, checkpoint_every=10), depths=(8,), archs=("plain", "resnet"))
    reference = train(configs[0], tmp_path / "reference")
    short = train(tiny(data_root, steps=10, checkpoint_every=10, arch="plain"), tmp_path / "short")
    cut = tmp_path / "sweep" / configs[0].run_id  # a run cut at step 10 of 20: its checkpoint, status running
    cut.parent.mkdir()
    short.folder.rename(cut)
    (cut / "config.json").write_text((reference.folder / "config.json").read_text())
    runfolder.write_status(cut, "running", step=10)
    prepare_folder(configs[1], tmp_path / "sweep")  # a run that failed before its first checkpoint
    runfolder.write_status(tmp_path / "sweep" / configs[1].run_id, "failed", "RuntimeError: boom")
    table = run_sweep(configs, tmp_path / "sweep", progress=False)
    assert table["status"].tolist() == ["done", "done"] and table["step"].tolist() == [20, 20]
    resumed = pd.read_parquet(cut / "metrics.parquet")
    assert resumed["step"].tolist() == [10, 20]
    assert runfolder.read_status(cut)["status"] == "done"


@pytest.mark.slow  # two spawned worker processes, each importing torch before it trains
def test_sweep_with_two_worker_processes(tmp_path, data_root):
    configs = grid(tiny(data_root, steps=10, checkpoint_every=10), depths=(8,), archs=("plain", "resnet"))
    table = run_sweep(configs, tmp_path, workers=2, progress=False)
    assert table["run"].tolist() == [c.run_id for c in configs]  # the grid's order, whatever finished first
    assert table["status"].tolist() == ["done", "done"]
    alone = train(configs[1], tmp_path / "alone")  # a worker process trains exactly what one process would
    loss = pd.read_parquet(tmp_path / configs[1].run_id / "metrics.parquet")["loss"]
    assert loss.tolist() == pd.read_parquet(alone.folder / "metrics.parquet")["loss"].tolist()


def test_sweep_refuses_no_workers_and_a_failed_run_does_not_stop_it(tmp_path, data_root):
    with pytest.raises(ValueError, match="workers=0 must be at least 1"):
        run_sweep([TINY], tmp_path, workers=0)
    configs = [tiny(data_root, steps=10, checkpoint_every=10, batch_size=5000), tiny(data_root, steps=10)]
    table = run_sweep(configs, tmp_path, progress=False)
    assert table["status"].tolist() == ["failed", "done"]
    assert "batch_size=5000 is larger than the training set" in table["reason"].iloc[0]


def test_format_summary_shows_percent_and_dashes():
    table = pd.DataFrame([{"run": "a", "status": "done", "step": 10, "train_error": 0.25, "test_error": float("nan"),
                           "seconds": 3.4, "reason": ""}])
    text = format_summary(table)
    assert "25.00 %" in text and "—" in text and "done" in text
