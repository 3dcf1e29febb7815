"""A run's table as TensorBoard scalars: from a finished run folder, or live from a training callback.

    export_run("runs/my-run", "tb")                 # resviz export-tb runs/my-run --logdir tb
    RecorderCallback(..., sinks=[TensorBoardSink("tb/my-run")])     # live
    tensorboard --logdir tb

What is written (all through one SummaryWriter per run):
  <metric>/<layer>            value against step: the SCALARS tab has one section per metric, one chart per layer
  train/<column>              the training log (loss, lr, test_error, ...), against step
  depth/<metric>/step<k>      a depth profile: value against layer_index (TensorBoard's x axis is "step", here it
                              is the layer's position along depth), for a few recorded steps k
  CUSTOM SCALARS tab          per metric, one chart with every layer against step ("<metric> vs step"), and one
                              with the depth profiles of the chosen steps ("<metric> vs depth", one line per step)
Values come from the host table (the Recorder copies them once per flush); nothing here touches the device.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from resviz import runs, schema
from resviz.runfolder import check_run_id

DEPTH_STEPS = 8  # depth profiles drawn per metric when exporting a finished run


def profile_steps(steps, limit: int = DEPTH_STEPS) -> list[int]:
    """Up to `limit` recorded steps, evenly spread, always including the first and the last."""
    steps = np.unique(np.asarray(steps, dtype=np.int64))
    if len(steps) <= limit:
        return steps.tolist()
    return steps[np.unique(np.linspace(0, len(steps) - 1, limit).round().astype(int))].tolist()


def depth_tags(stats: pd.DataFrame, steps) -> pd.DataFrame:
    """Rows of the chosen steps with their depth tag: depth/<metric>/step<k>, and, where two layers of one
    metric share a layer_index (channel_var at a block's branch and output), the layer's last name part added:
    depth/channel_var.probe_out/step<k>."""
    rows = stats[stats["step"].isin(list(steps))]
    if not len(rows):
        return rows.assign(tag=pd.Series([], dtype=object))
    metric = rows["metric"].astype(str)
    dup = rows.duplicated(["metric", "step", "layer_index"], keep=False)
    clash = set(metric[dup])
    suffix = rows["layer"].astype(str).str.rsplit(".", n=1).str[-1]
    name = np.where(metric.isin(clash), metric + "." + suffix, metric)
    return rows.assign(tag="depth/" + pd.Series(name, index=rows.index) + "/step" + rows["step"].astype(str))


def layout(metrics) -> dict:
    """The CUSTOM SCALARS layout: per metric, one chart of all layers vs step, one of the depth profiles."""
    charts = {}
    for m in metrics:
        q = re.escape(m)
        charts[m] = {
            f"{m} vs step (one line per layer)": ["Multiline", [rf"^{q}/.*"]],
            f"{m} vs depth (x = layer index, one line per step)": ["Multiline", [rf"^depth/{q}(\.[^/]+)?/step\d+$"]],
        }
    return charts


def write(writer, stats: pd.DataFrame, metrics: pd.DataFrame | None = None, *, depth_steps=None,
          with_layout: bool = True) -> None:
    """Write the rows of `stats` (and the training log `metrics`) to a SummaryWriter. depth_steps: the steps
    whose depth profiles are written (None: profile_steps of the table)."""
    if len(stats):
        tags = stats["metric"].astype(str) + "/" + stats["layer"].astype(str)
        for tag, step, value in zip(tags.to_numpy(), stats["step"].to_numpy(), stats["value"].to_numpy()):
            writer.add_scalar(tag, float(value), int(step))
        chosen = profile_steps(stats["step"]) if depth_steps is None else depth_steps
        prof = depth_tags(stats, chosen)
        for tag, x, value in zip(prof["tag"].to_numpy(), prof["layer_index"].to_numpy(), prof["value"].to_numpy()):
            writer.add_scalar(tag, float(value), int(x))
        if with_layout:
            writer.add_custom_scalars(layout(sorted(set(stats["metric"].astype(str)))))
    if metrics is not None and len(metrics):
        for column in ("loss", "train_error", "test_error", "test_loss", "lr", "images_per_s"):
            values = metrics[column].to_numpy(dtype=np.float64)
            for step, value in zip(metrics["step"].to_numpy(), values):
                if not np.isnan(value):
                    writer.add_scalar(f"train/{column}", float(value), int(step))
    writer.flush()


def _summary_writer(logdir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's writer needs the tensorboard package
        raise ImportError("TensorBoard export needs the tensorboard package: "
                          "pip install 'resviz[tensorboard]'") from err
    return SummaryWriter(log_dir=str(logdir))


def export_run(run: str | os.PathLike, logdir: str | os.PathLike, *, depth_steps: int = DEPTH_STEPS) -> Path:
    """Write one finished (or running) run folder to `logdir/<run_id>/` and return that folder."""
    metrics, stats, row = runs.load_run(run)
    stats = schema.coerce(stats) if len(stats) else stats
    if not len(stats) and not len(metrics):
        raise ValueError(f"run {run} has neither stats.parquet nor metrics.parquet rows: nothing to export")
    folder = Path(logdir) / check_run_id(row["run_id"], logdir, flag=f"run_id in {run}/config.json")
    writer = _summary_writer(folder)
    try:
        steps = profile_steps(stats["step"], depth_steps) if len(stats) else []
        write(writer, stats, metrics, depth_steps=steps)
    finally:
        writer.close()
    return folder


class TensorBoardSink:
    """Live TensorBoard output for RecorderCallback(sinks=[...]): the rows of each save, with the depth profile of
    the last recorded step of each save. Give a log dir, or an open SummaryWriter (e.g. Lightning's
    `TensorBoardLogger(...).experiment`), which is then left open."""

    def __init__(self, logdir: str | os.PathLike | None = None, *, writer=None):
        if (logdir is None) == (writer is None):
            raise ValueError("TensorBoardSink needs exactly one of logdir='tb/run' or writer=SummaryWriter(...)")
        self._own = writer is None
        self.writer = _summary_writer(logdir) if writer is None else writer
        self._layout: set[str] = set()

    def write(self, stats: pd.DataFrame, metrics: pd.DataFrame) -> None:
        steps = [int(stats["step"].max())] if len(stats) else []
        names = set(stats["metric"].astype(str)) if len(stats) else set()
        write(self.writer, stats, metrics, depth_steps=steps, with_layout=False)
        if names - self._layout:  # the layout names every metric seen so far
            self._layout |= names
            self.writer.add_custom_scalars(layout(sorted(self._layout)))
            self.writer.flush()

    def close(self) -> None:
        if self._own:
            self.writer.close()
        else:
            self.writer.flush()


__all__ = ["DEPTH_STEPS", "TensorBoardSink", "depth_tags", "export_run", "layout", "profile_steps", "write"]
