"""Figures of the training log (RunSet.metrics) against step: error curves (He et al. Fig. 6) and the degradation
problem at a glance (final error against depth).

`final_errors` is each run's last training and test error, shared with the normalisation figures.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from resviz.plots.selection import by_run, training_rows
from resviz.plots.style import STEP_AXIS, arch_name, arch_rank, base_layout, run_color

METRICS_HINT = "pass RunSet.metrics (metrics.parquet rows)"


def final_errors(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run: arch, depth, norm, label, train and test error in %. Training error is the last logged
    interval's; test error the last evaluation's (NaN when never evaluated)."""
    finals = []
    for run, g in by_run(rows):
        g = g.sort_values("step", kind="stable")
        tested = g["test_error"].to_numpy(np.float64)
        tested = tested[~np.isnan(tested)]
        finals.append((run.arch, run.depth, run.norm, run.label, 100 * float(g["train_error"].iloc[-1]),
                       100 * tested[-1] if len(tested) else np.nan))
    return pd.DataFrame(finals, columns=["arch", "depth", "norm", "label", "train", "test"])


def plot_training_curves(
    metrics: pd.DataFrame, *, step: int | None = None, runs=None, arch=None, depth=None,
) -> go.Figure:
    """He et al. Fig. 6: training error dashed, test error bold, against iterations, one colour per run.

    `step` draws a vertical line there. Test error is drawn where it was evaluated (NaN rows skipped).
    """
    rows = training_rows(metrics, ("step", "train_error", "test_error"), METRICS_HINT,
                         runs=runs, arch=arch, depth=depth)
    fig = go.Figure()
    for run, g in by_run(rows):
        g = g.sort_values("step", kind="stable")
        x = g["step"].to_numpy()
        train = 100 * g["train_error"].to_numpy(np.float64)
        test = 100 * g["test_error"].to_numpy(np.float64)
        ok = ~np.isnan(test)
        hov = "%{x} iterations<br>%{y:.2f} %<extra>%{fullData.name}</extra>"
        fig.add_trace(go.Scatter(x=x, y=train, mode="lines", name=f"{run.label} train", legendgroup=run.label,
                                 line=dict(color=run.color, dash="dash", width=1.5), hovertemplate=hov))
        if ok.any():
            fig.add_trace(go.Scatter(x=x[ok], y=test[ok], mode="lines", name=f"{run.label} test",
                                     legendgroup=run.label, line=dict(color=run.color, width=3.5),
                                     hovertemplate=hov))
    if step is not None:
        fig.add_vline(x=step, line=dict(color="#888", dash="dot", width=1))
    title = "Training (dashed) and test (bold) error"
    return base_layout(fig, title, STEP_AXIS, "error (%)", False)


def plot_error_vs_depth(metrics: pd.DataFrame, *, runs=None, arch=None, depth=None) -> go.Figure:
    """He et al.'s degradation at a glance: each run's final training (dashed) and test (bold) error
    against depth, one line per architecture. Training error is the last logged interval's; test error the
    last evaluation's. Several runs at one depth (seeds) are averaged."""
    rows = training_rows(metrics, ("step", "train_error", "test_error", "arch", "depth"), METRICS_HINT,
                         runs=runs, arch=arch, depth=depth)
    table = final_errors(rows)
    fig = go.Figure()
    for a in sorted(pd.unique(table["arch"]), key=arch_rank):
        t = table[table["arch"] == a].groupby("depth", sort=True).agg(
            train=("train", "mean"), test=("test", "mean"), n=("label", "size")).reset_index()
        color = run_color(a, int(np.median(t["depth"])))
        hov = "depth %{x}<br>%{y:.2f} %<br>%{customdata} run(s)<extra>%{fullData.name}</extra>"
        fig.add_trace(go.Scatter(x=t["depth"], y=t["train"], mode="lines+markers", name=f"{arch_name(a)} train",
                                 legendgroup=a, line=dict(color=color, dash="dash", width=1.5),
                                 customdata=t["n"], hovertemplate=hov))
        if t["test"].notna().any():
            fig.add_trace(go.Scatter(x=t["depth"], y=t["test"], mode="lines+markers", name=f"{arch_name(a)} test",
                                     legendgroup=a, line=dict(color=color, width=3.5), customdata=t["n"],
                                     hovertemplate=hov))
    fig.update_xaxes(tickvals=sorted(pd.unique(table["depth"])))
    fig = base_layout(fig, "Final training (dashed) and test (bold) error against depth", "depth (layers)",
                      "error (%)", False)
    return fig.update_layout(legend=dict(title=dict(text="architecture")))
