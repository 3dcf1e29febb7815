"""Run folders on disk: atomic writes, status, and loading many runs at once.

    runs/<run_id>/config.json      the TrainConfig (+ versions), written once
                  status.json      running | done | diverged | failed | interrupted, with a reason
                  metrics.parquet  per-step training log (schema.TRAIN_COLUMNS)
                  stats.parquet    the Recorder's tidy table (schema.STATS_COLUMNS)
                  checkpoint.pt    model, optimiser, step, seconds, warm-up end: what a resume needs (no
                                   RNG state: batches are a pure function of (seed, step))

Every file is written atomically by `resviz.io` (re-exported here as `atomic_write_json`, ...), so a reader
(or a run killed with SIGKILL mid-write) sees the old file or the new one, never half.
"""
from __future__ import annotations

import contextlib
import glob as globlib
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from resviz import schema
from resviz.errors import RunBusy
from resviz.io import (  # noqa: F401 - re-exported: runs.atomic_write_json etc. are public names
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    read_json,
)

STATUSES = ("running", "done", "diverged", "failed", "interrupted")
FINISHED = ("done", "diverged")  # a sweep does not run these again
# The metadata that names a run in every table (the Recorder's run_info, the stats and metrics rows), with
# its Python type: the one list of these keys.
RUN_INFO_KEYS: dict[str, type] = {k: str if kind == "str" else int for k, kind in schema.RUN_COLUMNS.items()}
META_COLUMNS = tuple(k for k in RUN_INFO_KEYS if k != "run_id")  # what a run's config.json gives its rows
SUMMARY_COLUMNS = ("run", "status", "step", "train_error", "test_error", "seconds", "reason")  # one row a run
LOCK_FILE = ".lock"  # in the run folder: flock'ed by the process that owns the run, holding its pid


class RunSkipped(UserWarning):
    """A damaged run left out of a RunSet (`load`); the message names the file and what is wrong with it."""


# ------------------------------------------------------------------------------ status
def write_status(folder: str | os.PathLike, status: str, reason: str = "", **extra) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status={status!r} is unknown; use one of {', '.join(STATUSES)}")
    record = {"status": status, "reason": reason, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    if "pid" in extra:
        record["host"] = socket.gethostname()  # a pid means something only on its own machine
    atomic_write_json(Path(folder) / "status.json", record)
    return record


def read_status(folder: str | os.PathLike) -> dict:
    """The run's status record; a folder with a config but no status is reported as 'running' at step 0."""
    folder = Path(folder)
    try:
        record = read_json(folder / "status.json")
    except FileNotFoundError:
        return {"status": "running", "reason": "no status.json yet", "step": 0}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # not from our atomic writes: a hand edit
        return {"status": "failed", "reason": f"unreadable {folder / 'status.json'}: {err}"}
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return {"status": "failed", "reason": f"{folder / 'status.json'} is not a run status; delete it to resume"}
    if record["status"] == "running" and _dead(record.get("pid"), record.get("host")):
        return {**record, "status": "interrupted",
                "reason": f"the process that ran it (pid {record['pid']}) is gone; run the command again to resume"}
    return record


def _dead(pid, host) -> bool:
    """Whether the process `pid` on this machine is gone (a pid from another machine, or none: unknown)."""
    if not isinstance(pid, int) or pid <= 0 or (host is not None and host != socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def read_config(folder: str | os.PathLike) -> dict:
    """A run folder's config.json as a dict, or a ValueError naming the file and the fix."""
    path = Path(folder) / "config.json"
    try:
        config = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it or delete the run folder") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a file; delete the run folder") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}, not a run config; restore it or delete the run "
                         "folder")
    return config


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Own the run folder for the `with` block: an OS lock (flock) on `folder/.lock`, released when the block
    ends or the process dies (so a stale lock of a killed process is simply taken over). Another live holder:
    `RunBusy` naming the folder and its pid, before anything in the folder is touched."""
    import fcntl

    folder = Path(folder)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            raise RunBusy(f"run folder {folder} is in use by process {holder if holder else '(unknown pid)'}; "
                          "wait for it to finish or stop it (a second writer would overwrite its files)",
                          holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (ValueError, OSError):
        return None


def is_run_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "config.json").is_file()


# ------------------------------------------------------------------------------ loading many runs
@dataclass(frozen=True)
class RunSet:
    """Runs loaded together: frames concatenated over runs, one status row per run."""

    metrics: pd.DataFrame  # schema.TRAIN_COLUMNS + META_COLUMNS
    stats: pd.DataFrame  # schema.STATS_COLUMNS
    status: pd.DataFrame  # run_id, status, reason, step, steps, folder + META_COLUMNS + dataset

    def __len__(self) -> int:
        return len(self.status)


def find_runs(path_or_glob: str | os.PathLike | list) -> list[Path]:
    """Run folders named by a folder, a folder of run folders (searched recursively), a glob, or a list."""
    if isinstance(path_or_glob, (list, tuple)):
        return sorted({f for p in path_or_glob for f in find_runs(p)})
    text = str(path_or_glob)
    if any(ch in text for ch in "*?["):
        candidates = [Path(p) for p in sorted(globlib.glob(text, recursive=True))]
    else:
        candidates = [Path(text)]
        if not candidates[0].exists():
            raise FileNotFoundError(f"no run folder at {text}: pass a run folder, a folder of runs, or a glob")
    found = []
    for c in candidates:
        if is_run_folder(c):
            found.append(c)
        elif c.is_dir():
            found.extend(sorted(p.parent for p in c.rglob("config.json")))
    return sorted(set(found))


def _meta(config: dict) -> dict:
    return {
        "arch": config.get("arch", "resnet"),
        "depth": int(config.get("depth", -1)),
        "norm": config.get("norm", "unknown"),
        "shortcut": "none" if config.get("arch") == "plain" else config.get("shortcut", "unknown"),
        "seed": int(config.get("seed", -1)),
    }


def load_run(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(metrics, stats, status row) of one run folder; missing tables come back empty."""
    folder = Path(folder)
    config = read_config(folder)
    run_id = config.get("run_id", folder.name)
    meta = _meta(config)
    metrics = read_table(folder / "metrics.parquet", schema.empty_train)
    identity = {k: str(config[k]) for k in schema.MODEL_COLUMNS if k in config}  # the model, where the config names it
    metrics = metrics.assign(**meta, **identity)
    stats = read_table(folder / "stats.parquet", schema.empty)
    status = read_status(folder)
    row = {
        "run_id": run_id,
        "status": status.get("status", "running"),
        "reason": status.get("reason", ""),
        "step": int(status.get("step", 0) or 0),
        "steps": int(config.get("steps", -1)),
        "dataset": config.get("dataset", ""),
        "folder": str(folder),
        **meta,
    }
    return metrics, stats, row


def load(path_or_glob: str | os.PathLike | list) -> RunSet:
    """Load every run under a folder, glob or list: metrics and stats concatenated, with their status."""
    folders = find_runs(path_or_glob)
    metrics, stats, rows = [], [], []
    for folder in folders:
        try:
            m, s, row = load_run(folder)
        except (ValueError, TypeError, OSError) as err:  # one damaged run must not hide the others: named, skipped
            warnings.warn(f"skipping run {folder}: {_damage(folder, err)}", RunSkipped, stacklevel=2)
            continue
        metrics.append(m)
        stats.append(s)
        rows.append(row)
    if metrics and any(len(m) for m in metrics):
        all_metrics = pd.concat([m for m in metrics if len(m)], ignore_index=True)
        all_metrics = schema.coerce_train(all_metrics)
    else:
        all_metrics = schema.empty_train().assign(**{k: pd.Series([], dtype=object) for k in META_COLUMNS})
    status_cols = ["run_id", "status", "reason", "step", "steps", "dataset", "folder", *META_COLUMNS]
    return RunSet(
        metrics=all_metrics,
        stats=schema.concat(stats),
        status=pd.DataFrame(rows, columns=status_cols),
    )


def read_table(path: Path, empty) -> pd.DataFrame:
    """A run's parquet table (`empty()` when absent), or a ValueError naming the damaged file."""
    if not path.exists():
        return empty()
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types; the file is what the user fixes
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} cannot be read ({text}); delete it or the run folder") from None


def _damage(folder: Path, err: Exception) -> str:
    """What is wrong with a damaged run folder, in one line naming the file."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if isinstance(err, ValueError) else f"{folder}: {type(err).__name__}: {text}"


def summary(runset: RunSet) -> pd.DataFrame:
    """One row per run: status, final train/test error and seconds, for the end of a sweep."""
    rows = []
    for _, r in runset.status.iterrows():
        m = runset.metrics[runset.metrics["run_id"].astype(str) == r["run_id"]]
        last = m.iloc[-1] if len(m) else None
        tested = m.dropna(subset=["test_error"]) if len(m) else m
        rows.append(
            {
                "run": r["run_id"],
                "status": r["status"],
                "step": r["step"],
                "train_error": float(last["train_error"]) if last is not None else float("nan"),
                "test_error": float(tested["test_error"].iloc[-1]) if len(tested) else float("nan"),
                "seconds": float(last["seconds"]) if last is not None else float("nan"),
                "reason": r["reason"],
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
