"""One run folder (resviz.runfolder): status records, the writer the callbacks use, and checkpoints that are loaded
without running code. The lock and resume under signals: test_faults.py; the trainer's folder: test_train.py."""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time

import pandas as pd
import pytest
import torch

from resviz import runfolder, runs, schema
from resviz.evaluate import load_run_model
from resviz.io import UnsafeFile
from resviz.train import train
from resviz.train.folder import prepare_folder
from helpers import tiny


# ------------------------------------------------------------------------------ status
def test_status_records(tmp_path):
    assert runfolder.read_status(tmp_path) == {"status": "interrupted", "step": 0,  # never started: no live .lock
                                               "reason": "never started (no status.json); run the command again to "
                                                         "start it"}
    record = runfolder.write_status(tmp_path, "diverged", "loss became nan", step=7)
    assert runfolder.read_status(tmp_path) == record and record["step"] == 7 and record["updated"]
    with pytest.raises(ValueError, match="status='finished' is unknown; use one of running, done"):
        runfolder.write_status(tmp_path, "finished")
    (tmp_path / "status.json").write_text("{not json")
    damaged = runfolder.read_status(tmp_path)
    assert damaged["status"] == "failed" and damaged["reason"].startswith(f"unreadable {tmp_path / 'status.json'}")


# ------------------------------------------------------------------------------ a run of another host, told by its lock
FORK = multiprocessing.get_context("fork")  # separate processes without a second start-up of torch


def _hold(folder, conn) -> None:
    with runfolder.run_lock(folder):
        conn.send("held")
        conn.recv()  # until the test says go


@contextlib.contextmanager
def lock_held_by_another_process(folder):
    """A live separate process holds `folder`'s lock (run_lock) inside the block; its pid is yielded."""
    here, there = FORK.Pipe()
    holder = FORK.Process(target=_hold, args=(folder, there))
    holder.start()
    try:
        assert here.recv() == "held"
        yield holder.pid
    finally:
        here.send("go")
        holder.join(60)
    assert holder.exitcode == 0


def test_a_running_status_of_another_host_is_read_by_its_lock(tmp_path):
    """A pid of another host cannot be checked from here: a live writer anywhere holds the run's lock (flock
    reaches across the hosts of a shared file system), so a free lock means the run was left `running` by a
    process that is gone (a killed driver's worker on another node)."""
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "status.json").write_text('{"status": "running", "step": 10, "pid": 4242, "host": "node-b"}')
    assert runfolder.read_status(folder)["status"] == "running"  # no lock file: nothing tells, as before
    with lock_held_by_another_process(folder):
        assert runfolder.read_status(folder)["status"] == "running"  # held by a live process
    status = runfolder.read_status(folder)  # the lock file stays, nobody holds it
    assert status["status"] == "interrupted" and status["step"] == 10
    assert status["reason"] == ("the process that ran it (pid 4242 on node-b) holds no lock on it any more; run the "
                                "command again to resume")
    with runfolder.run_lock(folder):  # this process holds it (a rerun taking the run over): not probed, running
        assert runfolder.read_status(folder)["status"] == "running"


def test_a_folder_without_status_is_running_while_its_lock_is_held(tmp_path):
    """No status.json yet: the lock tells whether a process is starting the run; the pid written in .lock
    (here a live process that holds no lock: the parent of this test) does not make it `running`."""
    folder = tmp_path / "r"
    folder.mkdir()
    with lock_held_by_another_process(folder) as pid:
        starting = runfolder.read_status(folder)
        assert starting["status"] == "running" and starting["pid"] == pid
    (folder / ".lock").write_text(f"{os.getppid()}\n")
    assert runfolder.read_status(folder)["status"] == "interrupted"


def _probe(folder, stop, probes) -> None:
    while not stop.is_set():
        runfolder.read_status(folder)  # a running status of another host: each read probes the lock
        with probes.get_lock():
            probes.value += 1


def test_a_reader_probing_the_lock_never_makes_a_writer_fail(tmp_path):
    """Readers probe the lock with a shared flock held for an instant; a writer taking the lock meanwhile waits
    them out (run_lock retries for LOCK_WAIT_S) instead of reading the run as busy."""
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / ".lock").write_text("")
    (folder / "status.json").write_text('{"status": "running", "step": 0, "pid": 4242, "host": "node-b"}')
    stop, probes = FORK.Event(), FORK.Value("q", 0)
    prober = FORK.Process(target=_probe, args=(folder, stop, probes))
    prober.start()
    try:
        while probes.value == 0:
            time.sleep(0.01)
        for _ in range(5000):
            with runfolder.run_lock(folder):  # RunBusy here would be a probe mistaken for a writer
                pass
    finally:
        stop.set()
        prober.join(60)
    assert probes.value > 100  # the writer really ran among the probes


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
    with pytest.raises(ValueError, match=r"^run_id '.*' (is empty|holds the separator '/'|names a folder itself)"):
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
    refusal = r"checkpoint.pt needs os.makedirs to load, which would run code from the file; .*delete the file"
    with pytest.raises(UnsafeFile, match=refusal):  # more than weights: refused in one line naming the file
        runfolder.load_checkpoint(folder / runfolder.CHECKPOINT_FILE)
    with pytest.raises(UnsafeFile, match=refusal):
        load_run_model(folder)
    with pytest.raises(UnsafeFile, match=refusal):
        train(config, tmp_path)
    assert not marker.exists()


def test_a_trained_checkpoint_loads_weights_only(tmp_path, data_root):
    result = train(tiny(data_root, steps=10, checkpoint_every=10), tmp_path)
    ckpt = runfolder.load_checkpoint(result.folder / runfolder.CHECKPOINT_FILE)
    assert ckpt["step"] == 10 and isinstance(ckpt["mean"], tuple) and ckpt["interval"] is None
    model, mean, std = load_run_model(result.folder)
    assert not model.training and mean == ckpt["mean"] and std == ckpt["std"]
