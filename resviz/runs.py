"""Reading run folders: many at once (`load` -> `RunSet`), and a summary row per run (`summary`).

The folder's layout, its writer, status and lock are `resviz.runfolder`; this module only reads.
"""
from __future__ import annotations

import glob as globlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from resviz import schema
from resviz.runfolder import (FINISHED, METRICS_FILE, STATS_FILE, is_run_folder, read_config, read_status,
                              read_table)
from resviz.schema import META_COLUMNS

SUMMARY_COLUMNS = ("run", "status", "step", "train_error", "test_error", "seconds", "reason")  # one row a run


class RunSkipped(UserWarning):
    """A damaged run left out of a RunSet (`load`); the message names the file and what is wrong with it."""


class RunIncomplete(UserWarning):
    """A finished run loaded without a table it should hold; the message names the missing file."""


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
    if Path(text).exists():  # a path that exists is itself, even with [ ] * ? in its name
        candidates = [Path(text)]
    elif any(ch in text for ch in "*?["):
        candidates = [Path(p) for p in sorted(globlib.glob(text, recursive=True))]
    else:
        raise FileNotFoundError(f"no run folder at {text}: pass a run folder, a folder of runs, or a glob")
    found = []
    for c in candidates:
        if is_run_folder(c):
            found.append(c)
        elif c.is_dir():
            found.extend(_run_folders_below(c))
    unique = {os.path.realpath(f): f for f in sorted(set(found), reverse=True)}  # one path per folder
    return sorted(unique.values())


def _run_folders_below(top: Path) -> list[Path]:
    """Run folders under `top`, through symbolic links too (`train` writes through them), each real folder once."""
    found, seen = [], set()
    for dirpath, dirnames, _ in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link loop, or a folder reached twice
            dirnames[:] = []
            continue
        seen.add(real)
        if is_run_folder(dirpath):
            found.append(Path(dirpath))
    return found


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
    metrics = read_table(folder / METRICS_FILE, schema.empty_train)
    identity = {k: str(config[k]) for k in schema.MODEL_COLUMNS if k in config}  # the model, where the config names it
    metrics = metrics.assign(**meta, **identity)
    stats = read_table(folder / STATS_FILE, schema.empty)
    status = read_status(folder)
    missing = [n for n in (METRICS_FILE, STATS_FILE) if not (folder / n).is_file()]
    if status.get("status") in FINISHED and METRICS_FILE in missing:
        warnings.warn(f"run {folder} is {status['status']} but has no {' or '.join(missing)} (deleted?): its "
                      "curves are left out; restore the files or train the run again", RunIncomplete, stacklevel=3)
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
