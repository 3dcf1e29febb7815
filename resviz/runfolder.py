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
from resviz.errors import RunBusy, UserError
from resviz.io import atomic_torch_save, atomic_write_json, atomic_write_parquet, read_checkpoint, read_json

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
    """The run's status record; a folder with a config but no status reads `running` while the process in its
    .lock lives (it is starting), else `interrupted` (it never started)."""
    path = Path(folder) / STATUS_FILE
    try:
        record = read_json(path)
    except FileNotFoundError:
        return _no_status(Path(folder))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # not from our atomic writes: a hand edit
        return {"status": "failed", "reason": f"unreadable {path}: {err}"}
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return {"status": "failed", "reason": f"{path} is not a run status; delete it to resume"}
    return _running_or_gone(Path(folder), record) if record["status"] == "running" else record


def _running_or_gone(folder: Path, record: dict) -> dict:
    """A `running` record as it stands: `interrupted` once its process is gone. A pid of this host is checked
    directly; one of another host cannot be, so the run's lock tells (flock works across the hosts of a shared
    file system): nobody holds it, nobody writes the run. Where neither can tell, it stays `running`."""
    pid, host = record.get("pid"), record.get("host")
    if _dead(pid, host):
        return {**record, "status": "interrupted",
                "reason": f"the process that ran it (pid {pid}) is gone; run the command again to resume"}
    if host is not None and host != socket.gethostname() and _lock_is_free(folder) is True:
        return {**record, "status": "interrupted",
                "reason": f"the process that ran it (pid {pid} on {host}) holds no lock on it any more; run the "
                          "command again to resume"}
    return record


def _no_status(folder: Path) -> dict:
    """A run folder without status.json: `running` while a process holds its .lock (it is starting), else
    `interrupted` (it never started, or was killed before its first status). Where the lock cannot be probed,
    the pid its last holder wrote in it is checked on this machine."""
    holder, free = _lock_holder_of(folder), _lock_is_free(folder)
    alive = (holder is not None and not _dead(holder, None)) if free is None else not free
    if alive:
        return {"status": "running", "reason": "no status.json yet", "step": 0, "pid": holder}
    return {"status": "interrupted", "reason": "never started (no status.json); run the command again to start it",
            "step": 0}


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
LOCK_WAIT_S = 1.0  # how long a writer retries a lock that a reader's probe (`_lock_is_free`) may hold an instant
_HELD: set[str] = set()  # the folders whose lock this process holds (`run_lock`): never probed from here


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _lock_is_free(folder: Path) -> bool | None:
    """Whether no process holds `folder/.lock`: a shared flock taken without waiting and released at once. None
    where it cannot be told (no lock file, a file system without flock). Never probed in the process that holds
    it: where flock is emulated by fcntl locks (NFS), closing the probe would drop the holder's own lock."""
    if _key(folder) in _HELD:
        return False
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOSYS, ENOLCK, EOPNOTSUPP: no flock here
        return None
    finally:
        os.close(fd)  # releases the shared lock
    return True


def _lock_exclusively(fd: int) -> None:
    """flock(LOCK_EX) without blocking, retried for LOCK_WAIT_S: a reader's probe holds a shared lock for an
    instant. BlockingIOError when another process still holds it."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Own the run folder for the `with` block: an OS lock (flock) on `folder/.lock`, released when the block
    ends or the process dies (so a stale lock of a killed process is simply taken over). Another live holder
    (still there after LOCK_WAIT_S: a reader's probe lets go at once): `RunBusy` naming the folder and its pid,
    before anything in the folder is touched."""
    folder = Path(folder)
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except (IsADirectoryError, NotADirectoryError) as err:  # a folder where the lock file goes: not resviz's
        raise UserError(f"{folder / LOCK_FILE} cannot be the run's lock file ({err.strerror}); delete it and run "
                        "again") from None
    key = None
    try:
        try:
            _lock_exclusively(fd)
        except BlockingIOError:
            holder = _lock_holder(fd)
            raise RunBusy(f"run folder {folder} is in use by process {holder if holder else '(unknown pid)'}; "
                          "wait for it to finish or stop it (a second writer would overwrite its files)",
                          holder) from None
        except OSError as err:  # ENOSYS, ENOLCK, EOPNOTSUPP: a file system without flock (Lustre, NFS -o nolock)
            raise UserError(f"cannot lock {folder / LOCK_FILE} ({err.strerror or err}): its file system does not "
                            "support flock, which keeps two writers off one run; mount Lustre with -o flock, NFS "
                            "with locking (not -o nolock), or choose an --out on a local disk") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        key = _key(folder)
        _HELD.add(key)
        yield folder
    finally:
        if key is not None:
            _HELD.discard(key)
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (ValueError, OSError):
        return None


def _lock_holder_of(folder: Path) -> int | None:
    """The pid its last holder wrote in the folder's .lock, or None (no lock, or unreadable)."""
    try:
        return int((folder / LOCK_FILE).read_text().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------------------ run ids
NAME_MAX = 255  # bytes in one file name on the usual file systems, where pathconf cannot say


def name_max(out: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of `out` (or its nearest existing parent) takes."""
    path = Path(out).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return int(os.pathconf(path, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def check_run_id(run_id, out: str | os.PathLike = ".", flag: str = "--run-id") -> str:
    """`run_id` if it is a name, not a path: one non-empty folder name (no separator, not . or ..), printable,
    no longer than the file system of `out` takes; else a ValueError naming it and the fix. Checked before
    anything is written, so the run's folder, its lock and its rows all use this one name inside `out`."""
    shown = repr(run_id) if len(str(run_id)) <= 60 else repr(str(run_id)[:40]) + f"... ({len(str(run_id))} chars)"
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError(f"{flag} {shown} is empty; give a folder name such as 'resnet20-s0'")
    seps = [s for s in (os.sep, os.altsep, "/", "\\") if s and s in run_id]
    if seps or run_id in (".", ".."):
        what = f"holds the separator {seps[0]!r}" if seps else "names a folder itself"
        raise ValueError(f"{flag} {shown} {what}; a run id is one folder name inside --out (choose where with "
                         "--out): use e.g. 'resnet20-s0'")
    odd = next((ch for ch in run_id if not ch.isprintable()), None)
    if odd is not None:
        raise ValueError(f"{flag} {shown} holds the unprintable character {odd!r}; use letters, digits, '-', "
                         "'_' and '.'")
    limit = name_max(out)
    if len(os.fsencode(run_id)) > limit:
        raise ValueError(f"{flag} {shown} is {len(os.fsencode(run_id))} bytes long; the file system of {out} "
                         f"takes at most {limit}: use a shorter one")
    return run_id


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
    strings only), so a crafted file cannot run code: one that needs more is refused (`resviz.io.UnsafeFile`,
    one line naming it); torch's error for other damage."""
    return read_checkpoint(path, map_location)


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
        check_run_id(run_id, out, flag="run_id")  # one folder name inside `out`, before anything is written
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
    "STATUSES", "STATUS_FILE", "RunFolder", "check_run_id", "default_run_id", "is_run_folder", "jsonable",
    "load_checkpoint", "metrics_frame", "name_max", "read_config", "read_status", "read_table", "run_lock",
    "write_status",
]
