"""What both sweep engines share: the grid of configs, one run trained into its folder, the summary table.

Each run is one `train.train` call into `out/<run_id>/`, so a re-run of the same sweep skips the runs that are
done (or diverged), resumes the ones that were cut, and retries the failed ones, whichever engine runs it.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pandas as pd
import torch

from resviz import runfolder, runs
from resviz.errors import RunBusy
from resviz.train import RunResult, TrainConfig, train

GRID_FIELDS = ("depth", "arch", "norm", "shortcut", "seed", "branch_init")  # the TrainConfig fields a grid varies


def grid(
    base: TrainConfig,
    *,
    depths=(None,),
    archs=(None,),
    norms=(None,),
    shortcuts=(None,),
    seeds=(None,),
    branch_inits=(None,),
) -> list[TrainConfig]:
    """Every combination of the given values over `base` (None keeps base's value). Invalid ones raise."""
    configs, seen = [], set()
    for depth, arch, norm, shortcut, seed, branch_init in itertools.product(
        depths, archs, norms, shortcuts, seeds, branch_inits
    ):
        changes = {k: v for k, v in dict(depth=depth, arch=arch, norm=norm, shortcut=shortcut, seed=seed).items()
                   if v is not None}
        if branch_init is not None:
            changes["branch_init"] = None if branch_init == "none" else branch_init
        config = dataclasses.replace(base, **changes)
        if config.arch == "plain" and config.shortcut != base.shortcut:
            continue  # a plain net has no shortcut: one run covers every shortcut value
        config.validate()
        if config.run_id not in seen:
            seen.add(config.run_id)
            configs.append(config)
    return configs


def run_one(config: TrainConfig | dict, out: str | os.PathLike, threads: int | None = None) -> dict:
    """Train ONE config into `out/<run_id>/` (resuming or skipping it as `train` does) and return its summary
    row (`runs.SUMMARY_COLUMNS`: run, status, step, errors, seconds, reason). Never raises for a failed run:
    the row says `failed` (or `busy`: another live process holds the run folder) with the reason. A signal
    (SIGINT, SIGTERM) still raises `resviz.errors.Interrupted` after the run saved itself. What a remote
    worker (a process pool, Ray) calls; `config` may be a `TrainConfig.to_dict()` mapping."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if threads:
        torch.set_num_threads(threads)
    nan = float("nan")
    try:
        return summary_row(train(config, out))
    except RunBusy as err:
        return summary_row(RunResult(config.run_id, Path(out) / config.run_id, "busy", -1, nan, nan, nan,
                                     reason=f"skipped: {err}"))
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep; train() recorded it
        return summary_row(RunResult(config.run_id, Path(out) / config.run_id, "failed", -1, nan, nan, nan,
                                     reason=f"{type(err).__name__}: {err}"))


def summary_row(r: RunResult) -> dict:
    """A run's outcome as a row of the summary table (`runs.SUMMARY_COLUMNS`)."""
    return {"run": r.run_id, "status": r.status, "step": r.step, "train_error": r.train_error,
            "test_error": r.test_error, "seconds": r.seconds, "reason": r.reason}


def steps_done(config: TrainConfig, out: str | os.PathLike) -> int:
    """Steps a run has saved so far (its last checkpoint), read from its status file."""
    status = runfolder.read_status(Path(out) / config.run_id)
    return config.steps if status.get("status") in runfolder.FINISHED else int(status.get("step", 0) or 0)


def summary_table(rows: list[dict], configs: list[TrainConfig] | None = None) -> pd.DataFrame:
    """Run outcomes (`run_one`'s rows) as the sweep's summary table, in the order of `configs` when given."""
    table = pd.DataFrame(rows, columns=list(runs.SUMMARY_COLUMNS))
    if configs is None:
        return table.reset_index(drop=True)
    order = {c.run_id: i for i, c in enumerate(configs)}
    return table.sort_values("run", key=lambda s: s.map(order)).reset_index(drop=True)


def format_summary(table: pd.DataFrame) -> str:
    """The end-of-sweep table as text (errors in percent, seconds rounded), then each distinct reason a run
    did not finish, whole and once, with the runs it hit."""
    shown = table.copy()
    for col in ("train_error", "test_error"):
        shown[col] = (100 * shown[col]).map(lambda v: "—" if pd.isna(v) else f"{v:.2f} %")
    shown["seconds"] = shown["seconds"].map(lambda v: "—" if pd.isna(v) else f"{v:.0f}")
    unfinished = shown[~shown["status"].isin(runfolder.FINISHED) & (shown["reason"].fillna("") != "")]
    reasons = list(dict.fromkeys(unfinished["reason"]))
    shown["reason"] = shown["reason"].fillna("").map(
        lambda r: f"[{reasons.index(r) + 1}]" if r in reasons else r[:40])
    lines = [shown.to_string(index=False)]
    for i, reason in enumerate(reasons, 1):
        hit = unfinished[unfinished["reason"] == reason]["run"].tolist()
        lines.append(f"[{i}] {', '.join(hit)}:\n    {reason}")
    return "\n".join(lines)


__all__ = ["GRID_FIELDS", "format_summary", "grid", "run_one", "steps_done", "summary_row", "summary_table"]
