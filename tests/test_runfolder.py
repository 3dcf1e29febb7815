"""One run folder (resviz.runfolder): status records, the writer the callbacks use, and checkpoints that are loaded
without running code. The lock and resume under signals: test_faults.py; the trainer's folder: test_train.py."""
from __future__ import annotations

import math
import os
import pickle

import pandas as pd
import pytest
import torch

from resviz import runfolder, runs, schema
from resviz.evaluate import load_run_model
from resviz.train import train
from resviz.train.folder import prepare_folder
from helpers import tiny


# ------------------------------------------------------------------------------ status
def test_status_records(tmp_path):
    assert runfolder.read_status(tmp_path) == {"status": "running", "reason": "no status.json yet", "step": 0}
    record = runfolder.write_status(tmp_path, "diverged", "loss became nan", step=7)
    assert runfolder.read_status(tmp_path) == record and record["step"] == 7 and record["updated"]
    with pytest.raises(ValueError, match="status='finished' is unknown; use one of running, done"):
        runfolder.write_status(tmp_path, "finished")
    (tmp_path / "status.json").write_text("{not json")
    damaged = runfolder.read_status(tmp_path)
    assert damaged["status"] == "failed" and damaged["reason"].startswith(f"unreadable {tmp_path / 'status.json'}")


# ------------------------------------------------------------------------------ the writer of the callbacks
class ListSink:
    """A dashboard that keeps what it is given."""

    def __init__(self, fail_on_close: bool = False):
        self.got: list[tuple[int, int]] = []
        self.closed = False
        self.fail_on_close = fail_on_close

    def write(self, stats: pd.DataFrame, metrics: pd.DataFrame) -> None:
        self.got.append((len(stats), len(metrics)))

    def close(self) -> None:
        self.closed = True
        if self.fail_on_close:
            raise OSError("dashboard gone")


def stats_rows(run_id: str, step: int) -> pd.DataFrame:
    row = {"run_id": run_id, "arch": "Net", "depth": -1, "norm": "unknown", "shortcut": "unknown", "seed": 3,
           "step": step, "epoch": math.nan, "layer": "bn", "layer_index": 0, "stage": -1, "block": -1,
           "metric": "response_std", "value": 1.5}
    return schema.coerce(pd.DataFrame([row]))


def test_writer_folder_reads_back_and_sinks_get_only_new_rows(tmp_path):
    sinks = [ListSink(), ListSink(fail_on_close=True)]
    writer = runfolder.RunFolder(tmp_path, "fit", sinks=sinks)
    writer.open({"arch": "Net", "seed": 3, "source": "test", "lr": float("inf")})
    assert runfolder.read_status(writer.folder)["status"] == "running"
    config = runfolder.read_config(writer.folder)
    assert config["depth"] == -1 and config["dataset"] == "" and config["lr"] == "inf"  # defaults; JSON-safe
    writer.add_stats(stats_rows("fit", 0))
    writer.add_metrics([{"step": 2, "loss": 0.5}])
    writer.save()
    writer.add_stats(stats_rows("fit", 4))
    writer.finish("done", step=4)  # a sink that fails to close does not hide the outcome
    assert [s.got for s in sinks] == [[(1, 1), (1, 0)]] * 2 and all(s.closed for s in sinks)
    rs = runs.load(tmp_path)
    assert rs.status["status"].tolist() == ["done"] and rs.status["step"].tolist() == [4]
    assert rs.stats["step"].tolist() == [0, 4] and rs.metrics["loss"].tolist() == [0.5]
    assert math.isnan(rs.metrics["train_error"].iloc[0])  # columns nobody knows are NaN


def test_writer_resumed_at_a_step_keeps_the_earlier_rows_below_it(tmp_path):
    first = runfolder.RunFolder(tmp_path, "fit")
    first.open({})
    first.add_stats(pd.concat([stats_rows("fit", 0), stats_rows("fit", 4)]))
    first.add_metrics([{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}])
    first.finish("interrupted", step=4)
    again = runfolder.RunFolder(tmp_path, "fit")
    again.open({}, first_step=4)
    assert again.stats()["step"].tolist() == [0] and again.metrics()["step"].tolist() == [2]


@pytest.mark.parametrize("run_id", ["", "a/b", ".", ".."])
def test_writer_refuses_a_run_id_that_is_not_a_folder_name(tmp_path, run_id):
    with pytest.raises(ValueError, match=r"must be a non-empty folder name without '/'"):
        runfolder.RunFolder(tmp_path, run_id)


# ------------------------------------------------------------------------------ checkpoints
class Payload:
    """A pickle that, loaded with weights_only=False, creates a folder: stands for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_crafted_checkpoint_runs_no_code(tmp_path, data_root):
    config = tiny(data_root, steps=10)
    folder = prepare_folder(config, tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"model": Payload(marker), "config": config.to_dict()}, folder / runfolder.CHECKPOINT_FILE)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # more than weights: refused
        runfolder.load_checkpoint(folder / runfolder.CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="is not a resviz run checkpoint"):
        load_run_model(folder)
    with pytest.raises(ValueError, match=r"(?s)cannot be read .*delete it to restart the run"):
        train(config, tmp_path)
    assert not marker.exists()


def test_a_trained_checkpoint_loads_weights_only(tmp_path, data_root):
    result = train(tiny(data_root, steps=10, checkpoint_every=10), tmp_path)
    ckpt = runfolder.load_checkpoint(result.folder / runfolder.CHECKPOINT_FILE)
    assert ckpt["step"] == 10 and isinstance(ckpt["mean"], tuple) and ckpt["interval"] is None
    model, mean, std = load_run_model(result.folder)
    assert not model.training and mean == ckpt["mean"] and std == ckpt["std"]
