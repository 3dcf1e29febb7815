"""A run's table in Weights & Biases: from a finished run folder, or live from a training callback.

    export_run("runs/my-run", project="resviz")     # resviz export-wandb runs/my-run (WANDB_MODE=offline works)
    RecorderCallback(..., sinks=[WandbSink()])      # live, into wandb.run (e.g. Lightning's WandbLogger run)

What is logged:
  <metric>/<layer>        value against `resviz/step` (W&B groups the panels by metric: one section per metric)
  train/<column>          the training log (loss, lr, ...), against `resviz/step`
  depth/<metric>          a line plot (wandb.plot.line_series): value against layer index, one line per step
  depth_table/<metric>    the same rows as a wandb.Table (step, layer_index, layer, value) for custom charts
Steps go in the `resviz/step` key (declared with define_metric), never as wandb.log(step=...), so that logging
into a run another logger also writes (Lightning's WandbLogger) never conflicts with its step counter.
Values come from the host table (the Recorder copies them once per flush); nothing here touches the device.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from resviz import runs, schema
from resviz.integrations.tensorboard import DEPTH_STEPS, profile_steps
from resviz.io import read_json

STEP_KEY = "resviz/step"
TRAIN_KEYS = ("loss", "train_error", "test_error", "test_loss", "lr", "images_per_s")


def _wandb():
    try:
        import wandb
    except ImportError as err:
        raise ImportError("W&B export needs the wandb package: pip install 'resviz[wandb]'") from err
    return wandb


def step_dicts(stats: pd.DataFrame, metrics: pd.DataFrame | None = None) -> list[dict]:
    """One dict per step, {"resviz/step": k, "<metric>/<layer>": value, "train/loss": ...}, in step order."""
    out: dict[int, dict] = {}
    if len(stats):
        keys = (stats["metric"].astype(str) + "/" + stats["layer"].astype(str)).to_numpy()
        steps = stats["step"].to_numpy()
        values = stats["value"].to_numpy(dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        bounds = np.flatnonzero(np.diff(steps[order])) + 1
        for idx in np.split(order, bounds):
            out.setdefault(int(steps[idx[0]]), {}).update(zip(keys[idx].tolist(), values[idx].tolist()))
    if metrics is not None and len(metrics):
        for row in metrics[["step", *TRAIN_KEYS]].itertuples(index=False):
            d = out.setdefault(int(row.step), {})
            d.update({f"train/{k}": float(v) for k, v in zip(TRAIN_KEYS, row[1:]) if not np.isnan(v)})
    return [{STEP_KEY: k, **out[k]} for k in sorted(out)]


def depth_charts(stats: pd.DataFrame, steps) -> dict:
    """{"depth/<metric>": line_series (x = layer index, one line per step), "depth_table/<metric>": Table}."""
    wandb = _wandb()
    rows = stats[stats["step"].isin(list(steps))]
    charts = {}
    for metric, group in rows.groupby(rows["metric"].astype(str), sort=True):
        group = group.sort_values(["step", "layer_index"])
        xs, ys, keys = [], [], []
        for step, g in group.groupby("step", sort=True):
            # a metric with two rows per layer_index (channel_var: branch and output) gets a line for each
            for part, h in g.groupby(g["layer"].astype(str).str.rsplit(".", n=1).str[-1]
                                     if g["layer_index"].duplicated().any() else np.zeros(len(g))):
                xs.append(h["layer_index"].tolist())
                ys.append(h["value"].tolist())
                keys.append(f"step {step}" + (f" {part}" if isinstance(part, str) else ""))
        charts[f"depth/{metric}"] = wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=f"{metric} vs depth",
                                                           xname="layer index")
        table = group[["step", "layer_index", "layer", "value"]].astype({"layer": str})
        charts[f"depth_table/{metric}"] = wandb.Table(dataframe=table.reset_index(drop=True))
    return charts


def log(run, stats: pd.DataFrame, metrics: pd.DataFrame | None = None, *, depth_steps=None) -> None:
    """Log the rows of `stats` and the training log into a wandb run (see the module docstring for the keys)."""
    run.define_metric(STEP_KEY)
    names = sorted(set(stats["metric"].astype(str))) if len(stats) else []
    for prefix in [*names, "train", "depth", "depth_table"]:
        run.define_metric(f"{prefix}/*", step_metric=STEP_KEY)
    for d in step_dicts(stats, metrics):
        run.log(d)
    if len(stats):
        chosen = profile_steps(stats["step"]) if depth_steps is None else depth_steps
        if len(chosen):
            run.log({STEP_KEY: int(max(chosen)), **depth_charts(stats, chosen)})


def export_run(run: str | os.PathLike, *, project: str = "resviz", entity: str | None = None, mode: str | None = None,
               dir: str | os.PathLike | None = None, depth_steps: int = DEPTH_STEPS) -> Path:
    """Log one run folder as a new W&B run named after it (config = its config.json); returns the local W&B
    run folder (with mode="offline", or WANDB_MODE=offline, sync it later with `wandb sync`)."""
    wandb = _wandb()
    folder = Path(run)
    metrics, stats, row = runs.load_run(folder)
    stats = schema.coerce(stats) if len(stats) else stats
    if not len(stats) and not len(metrics):
        raise ValueError(f"run {run} has neither stats.parquet nor metrics.parquet rows: nothing to export")
    config = read_json(folder / "config.json")
    wrun = wandb.init(project=project, entity=entity, name=row["run_id"], config=config, mode=mode,
                      dir=None if dir is None else str(dir), reinit="create_new")
    try:
        steps = profile_steps(stats["step"], depth_steps) if len(stats) else []
        log(wrun, stats, metrics, depth_steps=steps)
        wrun.summary["status"] = row["status"]
    finally:
        wrun.finish()
    return Path(wrun.dir).parent


class WandbSink:
    """Live W&B output for RecorderCallback(sinks=[...]): the rows of each save, with the depth profile of the last
    recorded step of each save. run: a wandb run (default: wandb.run, the active one, e.g. Lightning's
    WandbLogger(...).experiment); it is left open."""

    def __init__(self, run=None):
        self._run = run

    @property
    def run(self):
        run = self._run or _wandb().run
        if run is None:
            raise RuntimeError("WandbSink found no active W&B run: call wandb.init(...) first or pass run=")
        return run

    def write(self, stats: pd.DataFrame, metrics: pd.DataFrame) -> None:
        steps = [int(stats["step"].max())] if len(stats) else []
        log(self.run, stats, metrics, depth_steps=steps)

    def close(self) -> None:
        pass


__all__ = ["STEP_KEY", "WandbSink", "depth_charts", "export_run", "log", "step_dicts"]
