"""Figures of the normalisation sweep (notebook 05: the same nets trained with batch, layer, group or no norm):
training and Fig. 7 side by side per normalisation, and the final errors by normalisation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from resviz.plots.selection import by_run, norm_order, profiles, training_rows
from resviz.plots.style import HEIGHT, axis_title, base_layout, customdata, hover, run_color, run_label, step_text
from resviz.plots.training import final_errors


def _norm_training_traces(fig: go.Figure, rows: pd.DataFrame, norms: list[str]) -> None:
    """Row 1: each run's training (dashed) and test (bold) error in the column of its norm; one legend entry per net."""
    shown: set[str] = set()
    hov = "%{x} iterations<br>%{y:.2f} %<extra>%{fullData.name}</extra>"
    for run, g in by_run(rows):
        col = norms.index(run.norm) + 1
        g = g.sort_values("step", kind="stable")
        color = run_color(run.arch, run.depth)
        name = run_label(run.arch, run.depth)
        test = 100 * g["test_error"].to_numpy(np.float64)
        ok = ~np.isnan(test)
        fig.add_trace(go.Scatter(x=g["step"], y=100 * g["train_error"].to_numpy(np.float64), mode="lines",
                                 name=f"{name} train", legendgroup=name, showlegend=f"{name} train" not in shown,
                                 line=dict(color=color, dash="dash", width=1.5), hovertemplate=hov), row=1, col=col)
        shown.add(f"{name} train")
        if ok.any():
            fig.add_trace(go.Scatter(x=g["step"].to_numpy()[ok], y=test[ok], mode="lines+markers",
                                     name=f"{name} test", legendgroup=name, showlegend=f"{name} test" not in shown,
                                     line=dict(color=color, width=3), marker=dict(size=6), hovertemplate=hov),
                          row=1, col=col)
            shown.add(f"{name} test")


def plot_norm_comparison(metrics: pd.DataFrame, stats: pd.DataFrame, *, step: int | None = None,
                         depth=None) -> go.Figure:
    """One column per normalisation: training (dashed) and test (bold) error over training on top, the response
    std of every 3×3 layer (He et al. Fig. 7, log scale) at `step` (default: the last) below; plain nets warm,
    ResNets cool, in every column the same colour."""
    rows = training_rows(metrics, ("step", "train_error", "test_error", "norm"),
                         "pass RunSet.metrics of runs with several norms", depth=depth,
                         empty_hint="train the runs first")
    norms = norm_order(rows["norm"])
    profs = profiles(stats, "response_std", step=step, depth=depth)
    fig = make_subplots(rows=2, cols=len(norms), shared_yaxes=True, shared_xaxes=False, vertical_spacing=0.14,
                        horizontal_spacing=0.03, subplot_titles=[f"norm = {n}" for n in norms])
    _norm_training_traces(fig, rows, norms)
    chosen = []
    for p in profs:
        if p.run.norm not in norms:
            continue
        chosen.append(p.step)
        name = run_label(p.run.arch, p.run.depth)
        fig.add_trace(go.Scatter(x=p.layer_index, y=p.value, mode="lines+markers", marker=dict(size=4),
                                 line=dict(color=run_color(p.run.arch, p.run.depth), width=2), name=name,
                                 legendgroup=name, showlegend=False,
                                 customdata=customdata(p.layer, p.layer_index, p.step),
                                 hovertemplate=hover("response_std")), row=2, col=norms.index(p.run.norm) + 1)
    fig.update_yaxes(title_text="error (%)", row=1, col=1)
    fig.update_yaxes(title_text=axis_title("response_std"), type="log", row=2, col=1)
    for c in range(1, len(norms) + 1):
        fig.update_yaxes(type="log", row=2, col=c)
        fig.update_xaxes(title_text="iteration", row=1, col=c)
        fig.update_xaxes(title_text="layer index", row=2, col=c)
    when = step_text(chosen, step) if chosen else "the last step"
    title = f"Normalisations side by side: training (top), response std at {when} (bottom)"
    fig = base_layout(fig, title)
    return fig.update_layout(height=HEIGHT + 250, legend=dict(title=dict(text="net")))


def plot_final_error_by_norm(metrics: pd.DataFrame, *, depth=None) -> go.Figure:
    """Final test error (bars) and final training error (diamonds) for each normalisation, plain and ResNet side
    by side. Test error is the last evaluation's, training error the last logged interval's."""
    rows = training_rows(metrics, ("step", "train_error", "test_error", "norm", "arch", "depth"),
                         "pass RunSet.metrics", depth=depth, empty_hint="train the runs first")
    table = final_errors(rows)[["arch", "depth", "norm", "train", "test"]]
    table = table.groupby(["arch", "depth", "norm"], as_index=False)[["train", "test"]].mean()  # seeds averaged
    norms = norm_order(table["norm"])
    fig = go.Figure()
    for (arch, d), g in table.groupby(["arch", "depth"], sort=False):
        g = g.set_index("norm").reindex(norms)
        name, color = run_label(arch, d), run_color(arch, d)
        fig.add_trace(go.Bar(x=norms, y=g["test"], name=f"{name} test", marker=dict(color=color), offsetgroup=name,
                             hovertemplate="%{x}: test %{y:.2f} %<extra>" + name + "</extra>"))
        fig.add_trace(go.Scatter(x=norms, y=g["train"], mode="markers", name=f"{name} train", offsetgroup=name,
                                 marker=dict(color=color, symbol="diamond", size=10,
                                             line=dict(color="#222", width=1.5)),
                                 hovertemplate="%{x}: train %{y:.2f} %<extra>" + name + "</extra>"))
    fig = base_layout(fig, "Final error by normalisation: test (bars), training (diamonds)", "normalisation",
                      "error (%)", False)
    return fig.update_layout(barmode="group", scattermode="group", legend=dict(title=dict(text="net")))
