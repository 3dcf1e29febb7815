"""One run folder on disk: its layout, the one writer (`RunFolder`), its lock, its status and its checkpoint.

    runs/<run_id>/config.json      the run's config (+ versions), written once
                  status.json      running | done | diverged | failed | interrupted, with a reason
                  metrics.parquet  per-step training log (schema.TRAIN_COLUMNS)
                  stats.parquet    the Recorder's tidy table (schema.STATS_COLUMNS)
                  checkpoint.pt    model, optimiser, step, seconds, warm-up end: what a resume needs (no
                                   RNG state: batches are a pure function of (seed, step))
                  .lock            flock held by the one process that owns the run, with its pid (`run_lock`)

The trainer (`resviz.train`) and the callbacks inside other trainers (`resviz.integrations`) write through
`RunFolder`; `resviz.runs` reads many folders at once. Every file is written atomically by `resviz.io`, so a
reader (or a run killed with SIGKILL mid-write) sees the old file or the new one, never half. Checkpoints are
loaded with `torch.load(weights_only=True)`: a crafted pickle in a run folder cannot run code.

    writer = RunFolder("runs", run_id, sinks=[TensorBoardSink("tb")])
    writer.open(config, first_step=0)          # config.json, status running (rows of an earlier fit kept below it)
    writer.add_stats(rec.drain())              # new Recorder rows (one host copy, done by the Recorder)
    writer.add_metrics(rows)                   # training-log rows (dicts of schema.TRAIN_COLUMNS)
    writer.save()                              # stats.parquet + metrics.parquet, atomically; sinks get new rows
    writer.finish("done", step=1000)           # save, then status.json
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import time
from pathlib import Path

import pandas as pd
import torch

from resviz import schema
from resviz.errors import RunBusy
from resviz.io import atomic_torch_save, atomic_write_json, atomic_write_parquet, read_json

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.parquet"
STATS_FILE = "stats.parquet"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"  # flock'ed by the process that owns the run, holding its pid

STATUSES = ("running", "done", "diverged", "failed", "interrupted")
FINISHED = ("done", "diverged")  # a sweep does not run these again
# What a folder written from outside `resviz train` says of its run when its model does not (runs.load reads it)
RUN_INFO_DEFAULTS = {"arch": "unknown", "depth": -1, "norm": "unknown", "shortcut": "unknown", "seed": -1}


# ------------------------------------------------------------------------------ status
def write_status(folder: str | os.PathLike, status: str, reason: str = "", **extra) -> dict:
    """Write status.json (atomically): `status` (one of STATUSES), `reason`, the time, and `extra` (step, pid, ...)."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r} is unknown; use one of {', '.join(STATUSES)}")
    record = {"status": status, "reason": reason, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    if "pid" in extra:
        record["host"] = socket.gethostname()  # a pid means something only on its own machine
    atomic_write_json(Path(folder) / STATUS_FILE, record)
    return record


def read_status(folder: str | os.PathLike) -> dict:
    """The run's status record; a folder with a config but no status is reported as 'running' at step 0."""
    path = Path(folder) / STATUS_FILE
    try:
        record = read_json(path)
    except FileNotFoundError:
        return {"status": "running", "reason": "no status.json yet", "step": 0}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # not from our atomic writes: a hand edit
        return {"status": "failed", "reason": f"unreadable {path}: {err}"}
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return {"status": "failed", "reason": f"{path} is not a run status; delete it to resume"}
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


# ------------------------------------------------------------------------------ the lock
@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Own the run folder for the `with` block: an OS lock (flock) on `folder/.lock`, released when the block
    ends or the process dies (so a stale lock of a killed process is simply taken over). Another live holder:
    `RunBusy` naming the folder and its pid, before anything in the folder is touched."""
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


# ------------------------------------------------------------------------------ reading one folder
def is_run_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def read_config(folder: str | os.PathLike) -> dict:
    """A run folder's config.json as a dict, or a ValueError naming the file and the fix."""
    path = Path(folder) / CONFIG_FILE
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


def read_table(path: Path, empty) -> pd.DataFrame:
    """A run's parquet table (`empty()` when absent), or a ValueError naming the damaged file."""
    if not path.exists():
        return empty()
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types; the file is what the user fixes
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} cannot be read ({text}); delete it or the run folder") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """A checkpoint.pt's contents, unpickled with `weights_only=True` (tensors, dicts, lists, tuples, numbers and
    strings only), so a crafted file cannot run code; torch's error for anything else."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ------------------------------------------------------------------------------ writing
def default_run_id(prefix: str, arch: str) -> str:
    """A run folder name for a run that was given none: "<prefix>-<arch>-<time>-<pid>"."""
    return f"{prefix}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def metrics_frame(rows: list[dict], columns=(*schema.TRAIN_COLUMNS, *schema.TRAIN_OPTIONAL_COLUMNS)) -> pd.DataFrame:
    """Training-log rows as a metrics table with `columns` (the training log's, optional ones included)."""
    if not rows:
        return schema.empty_train()
    return schema.coerce_train(pd.DataFrame(rows, columns=list(columns)))


def jsonable(value):
    """A value config.json can hold: numbers, strings, lists and dicts as they are, anything else as its repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return repr(value)


class RunFolder:
    """Writes `out/run_id/`: config.json once, status.json as the run goes, the two tables and the checkpoint.

    The trainer hands it whole tables (`write_tables`) and checkpoints (`save_checkpoint`); a callback inside
    another trainer adds rows as they come (`add_stats`, `add_metrics`) and saves them (`save`, `finish`), the
    rows since the last save going to its `sinks` (live dashboards) too."""

    def __init__(self, out: str | os.PathLike, run_id: str, sinks=()):
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"run_id={run_id!r} must be a non-empty folder name without '/', e.g. 'lightning-resnet8'")
        self.folder = Path(out) / run_id
        self.run_id = run_id
        self.sinks = list(sinks)
        self._stats: list[pd.DataFrame] = []
        self._metrics: list[dict] = []
        self._unsent_stats: list[pd.DataFrame] = []
        self._unsent_metrics: list[dict] = []

    # ---- whole files
    def write_config(self, config: dict) -> None:
        atomic_write_json(self.folder / CONFIG_FILE, config)

    def write_status(self, status: str, reason: str = "", **extra) -> dict:
        return write_status(self.folder, status, reason, **extra)

    def write_tables(self, stats: pd.DataFrame, metrics: pd.DataFrame) -> None:
        """stats.parquet then metrics.parquet, each atomically."""
        atomic_write_parquet(self.folder / STATS_FILE, stats)
        atomic_write_parquet(self.folder / METRICS_FILE, metrics)

    def save_checkpoint(self, state: dict) -> None:
        """checkpoint.pt, atomically; `state` holds tensors, dicts, lists, tuples, numbers and strings only."""
        atomic_torch_save(self.folder / CHECKPOINT_FILE, state)

    # ---- rows added as a fit goes (the callbacks)
    def open(self, config: dict, first_step: int = 0) -> None:
        """Write config.json (the run's `config` over RUN_INFO_DEFAULTS) and status 'running'. A fit resumed at
        `first_step` > 0 keeps the rows an earlier fit wrote to this folder below that step; a fresh fit (step 0)
        replaces them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if first_step > 0:
            for name, keep in ((STATS_FILE, self._stats), (METRICS_FILE, None)):
                try:
                    old = pd.read_parquet(self.folder / name)
                except (FileNotFoundError, OSError, ValueError):
                    continue
                old = old[old["step"] < first_step]
                if keep is not None:
                    keep.append(old)
                else:
                    self._metrics.extend(old[list(schema.TRAIN_COLUMNS)].to_dict("records"))
        full = {"run_id": self.run_id, **RUN_INFO_DEFAULTS, "steps": -1, "dataset": "", **config}
        self.write_config(jsonable(full))
        self.write_status("running", step=first_step, pid=os.getpid())

    def add_stats(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self._stats.append(frame)
            self._unsent_stats.append(frame)

    def add_metrics(self, rows: list[dict]) -> None:
        full = [{"run_id": self.run_id, **{k: math.nan for k in schema.TRAIN_COLUMNS if k != "run_id"}, **r}
                for r in rows]
        self._metrics.extend(full)
        self._unsent_metrics.extend(full)

    def stats(self) -> pd.DataFrame:
        if len(self._stats) > 1:  # keep one frame, so repeated saves do not redo the concatenation
            self._stats = [schema.concat(self._stats)]
        return self._stats[0] if self._stats else schema.empty()

    def metrics(self) -> pd.DataFrame:
        return metrics_frame(self._metrics, schema.TRAIN_COLUMNS)

    def save(self) -> None:
        """Write both tables (atomically) and hand the rows added since the last save to the sinks."""
        self.write_tables(self.stats(), self.metrics())
        if self.sinks and (self._unsent_stats or self._unsent_metrics):
            new_stats = schema.concat(self._unsent_stats)
            new_metrics = metrics_frame(self._unsent_metrics, schema.TRAIN_COLUMNS)
            for sink in self.sinks:
                sink.write(new_stats, new_metrics)
        self._unsent_stats, self._unsent_metrics = [], []

    def finish(self, status: str, reason: str = "", step: int = 0, **extra) -> None:
        """Save, close the sinks, then write the final status (also when saving failed: the status says why)."""
        try:
            self.save()
        except Exception as err:  # noqa: BLE001 - the status must still be written
            why = f"saving the tables failed: {type(err).__name__}: {err}"
            status, reason = "failed", f"{reason}; {why}" if reason else why
        finally:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - a dashboard that cannot close must not hide the run's outcome
                    pass
            self.write_status(status, reason, step=int(step), **extra)


__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "FINISHED", "LOCK_FILE", "METRICS_FILE", "RUN_INFO_DEFAULTS", "STATS_FILE",
    "STATUSES", "STATUS_FILE", "RunFolder", "default_run_id", "is_run_folder", "jsonable", "load_checkpoint",
    "metrics_frame", "read_config", "read_status", "read_table", "run_lock", "write_status",
]
