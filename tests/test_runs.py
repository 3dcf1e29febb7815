"""Reading run folders (resviz.runs) and atomic writes (resviz.io): finding and loading runs, the summary, damaged
folders. One folder's writer, status and lock: test_runfolder.py."""
from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest
import torch

from resviz import io, runs, schema
from resviz.train import train
from helpers import TINY, tiny


# ------------------------------------------------------------------------------ atomic writes
def test_atomic_writers_round_trip_and_leave_no_temporary_files(tmp_path):
    folder = tmp_path / "new" / "deeper"  # folders are made
    io.atomic_write_bytes(folder / "a.bin", b"abc")
    io.atomic_write_json(folder / "b.json", {"z": 1, "a": [1, 2], "path": tmp_path})
    df = pd.DataFrame({"x": [1, 2], "y": ["p", "q"]})
    io.atomic_write_parquet(folder / "c.parquet", df)
    io.atomic_torch_save(folder / "d.pt", {"t": torch.arange(3)})
    assert (folder / "a.bin").read_bytes() == b"abc"
    text = (folder / "b.json").read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"z"')  # sorted keys, indented
    assert io.read_json(folder / "b.json") == {"a": [1, 2], "path": str(tmp_path), "z": 1}
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "c.parquet"), df)
    assert torch.equal(torch.load(folder / "d.pt", weights_only=True)["t"], torch.arange(3))
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "b.json", "c.parquet", "d.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((folder / "a.bin").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    io.atomic_write_json(path, {"old": True})

    def half_then_fail(tmp):
        tmp.write_bytes(b'{"new": tr')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(path, half_then_fail)
    assert io.read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    with pytest.raises(TypeError):  # not JSON: nothing written, nothing left behind
        io.atomic_write_json(path, {1j: 1})  # complex keys
    assert io.read_json(path) == {"old": True} and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_run_metadata_keys_are_one_list():
    assert schema.META_COLUMNS == ("arch", "depth", "norm", "shortcut", "seed")
    assert list(schema.RUN_INFO_KEYS) == ["run_id", *schema.META_COLUMNS]


# ------------------------------------------------------------------------------ finding and loading runs
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("runs")
    train(tiny(data_root, steps=10, checkpoint_every=10), out / "group")
    train(tiny(data_root, steps=10, checkpoint_every=10, arch="plain"), out / "group")
    return out


def test_find_runs_by_folder_glob_and_list(two_runs):
    group = two_runs / "group"
    both = runs.find_runs(two_runs)  # a folder of run folders, searched recursively
    assert [p.name for p in both] == ["digits-plain8-batch-w8-s0", "digits-resnet8-batch-scA-w8-s0"]
    assert runs.find_runs(group / "digits-plain8-batch-w8-s0") == [both[0]]  # one run folder
    assert runs.find_runs(str(group / "*resnet*")) == [both[1]]
    assert runs.find_runs([both[1], str(group / "*")]) == both  # a list, deduplicated
    with pytest.raises(FileNotFoundError, match="no run folder at .*nowhere: pass a run folder"):
        runs.find_runs(two_runs / "nowhere")


def test_load_concatenates_runs_with_their_metadata(two_runs):
    rs = runs.load(two_runs)
    assert len(rs) == 2
    assert rs.status["status"].tolist() == ["done", "done"] and rs.status["steps"].tolist() == [10, 10]
    assert rs.status["arch"].tolist() == ["plain", "resnet"]
    assert rs.status["shortcut"].tolist() == ["none", "A"]  # a plain net has no shortcut
    schema.validate_train(rs.metrics)
    schema.validate(rs.stats)
    assert set(rs.metrics["run_id"].astype(str)) == set(rs.status["run_id"])
    assert {c: rs.metrics[c].iloc[0] for c in ("depth", "norm", "seed")} == {"depth": 8, "norm": "batch", "seed": 0}


def test_summary_one_row_per_run(two_runs):
    table = runs.summary(runs.load(two_runs))
    assert list(table.columns) == ["run", "status", "step", "train_error", "test_error", "seconds", "reason"]
    assert table["status"].tolist() == ["done", "done"] and table["step"].tolist() == [10, 10]
    assert table["test_error"].between(0, 1).all() and (table["seconds"] > 0).all()


def test_damaged_and_unfinished_folders(tmp_path):
    started = tmp_path / "started"  # a config, nothing else yet
    started.mkdir()
    (started / "config.json").write_text(json.dumps({"run_id": "started", "depth": 20, "steps": 100}))
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "config.json").write_text(json.dumps(TINY.to_dict()))
    (garbled / "status.json").write_text("{")
    (tmp_path / "not-a-run").mkdir()
    rs = runs.load(tmp_path)
    assert rs.status["run_id"].tolist() == ["garbled", "started"]  # no run_id in the config: the folder's name
    by_folder = rs.status.set_index(rs.status["folder"].map(lambda f: os.path.basename(f)))
    assert by_folder.loc["started", "status"] == "running" and by_folder.loc["started", "step"] == 0
    assert by_folder.loc["garbled", "status"] == "failed"
    assert len(rs.metrics) == 0 and len(rs.stats) == 0
    assert set(schema.META_COLUMNS) <= set(rs.metrics.columns)
    table = runs.summary(rs)
    assert table["train_error"].isna().all()
    (started / "metrics.parquet").write_bytes(b"not parquet")  # a damaged table: named; load skips that run
    with pytest.raises(ValueError, match=f"{started / 'metrics.parquet'} cannot be read .*; delete it"):
        runs.load_run(started)
    with pytest.warns(runs.RunSkipped, match="metrics.parquet cannot be read"):
        assert len(runs.load(started)) == 0
