"""Figures of the image-space shattered-gradients experiment (`resviz.analysis.shattered`, SETTING_IMAGE; Balduzzi
et al. 2017 adapted): how alike the input gradients of nearby inputs are, measured as the uncentred mean cosine
similarity of the gradients (not an autocorrelation or a covariance: no mean is subtracted), against depth, as
matrices over every pair of inputs, and against distance on the line.

`plot_shattering` draws a `shattering_vs_depth` frame; the other two draw `{label: result}` where a result has
`.correlation` (n, n), `.lag1`, `.lags` and `.autocorrelation` (duck-typed: `correlation_matrices` returns them).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from resviz.plots.selection import require_rows
from resviz.plots.style import HEIGHT, arch_name, arch_norm_style, arch_rank, base_layout

_NO_RESULTS = "no results to draw; pass resviz.analysis.shattered.correlation_matrices(...)"


def plot_shattering(frame: pd.DataFrame) -> go.Figure:
    """Balduzzi et al. 2017 adapted to images, at initialisation: the uncentred mean cosine similarity of the
    input gradients of neighbouring inputs on a line (top) and of all pairs (bottom) against depth, one line per
    (architecture, norm); mean over seeds, whiskers min..max. `frame` is `shattering_vs_depth(...)`."""
    require_rows(frame, ("arch", "norm", "depth", "cosine_lag1", "mean_cosine"),
                 "resviz.analysis.shattered.shattering_vs_depth(...)")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=["neighbouring inputs: uncentred mean cosine similarity, 1 step apart",
                                        "all pairs: uncentred mean cosine similarity"])
    order = sorted(frame.groupby(["arch", "norm"]).groups, key=lambda t: (arch_rank(t[0]), t[1]))
    for arch, norm in order:
        g = frame[((frame["arch"] == arch) & (frame["norm"] == norm)).to_numpy()]
        name = f"{arch_name(arch)}, {'BN' if norm == 'batch' else norm if norm != 'none' else 'no norm'}"
        color, dash = arch_norm_style(arch, norm, name)
        for row, col in ((1, "cosine_lag1"), (2, "mean_cosine")):
            s = g.groupby("depth")[col].agg(["mean", "min", "max"]).reset_index()
            fig.add_trace(go.Scatter(
                x=s["depth"], y=s["mean"], mode="lines+markers", name=name, legendgroup=name, showlegend=row == 1,
                line=dict(color=color, dash=dash, width=2),
                error_y=dict(type="data", symmetric=False, array=s["max"] - s["mean"],
                             arrayminus=s["mean"] - s["min"], thickness=1),
                hovertemplate="depth %{x}: %{y:.3f}<extra>%{fullData.name}</extra>"), row=row, col=1)
    fig.update_yaxes(title_text="mean cosine similarity", row=1, col=1)
    fig.update_yaxes(title_text="mean cosine similarity", row=2, col=1)
    fig.update_xaxes(title_text="depth (layers)", tickvals=sorted(pd.unique(frame["depth"])), row=2, col=1)
    fig = base_layout(fig, "Shattered gradients at initialisation: how alike are the gradients of nearby inputs?")
    return fig.update_layout(height=HEIGHT + 150, legend=dict(title=dict(text="net")))


def plot_gradient_correlation(results: dict) -> go.Figure:
    """The cosine similarity (uncentred) of the input gradients of every pair of inputs on the line, one heatmap
    per net (the image-space counterpart of Balduzzi et al.'s covariance matrices, not a covariance): a bright band
    around the diagonal means nearby inputs have alike gradients; a lone diagonal is white noise. `results`:
    {label: GradientCorrelation}, e.g.
    `resviz.analysis.shattered.correlation_matrices(...)`."""
    if not results:
        raise ValueError(_NO_RESULTS)
    labels = list(results)
    cols = 2 if len(labels) == 4 else min(len(labels), 3)
    nrows = math.ceil(len(labels) / cols)
    titles = [f"{k} (mean cosine at lag 1: {results[k].lag1:.2f})".replace(": -0.00", ": 0.00") for k in labels]
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=0.12)
    for i, label in enumerate(labels):
        corr = np.asarray(results[label].correlation)  # (n, n)
        r, c = divmod(i, cols)
        fig.add_trace(go.Heatmap(z=corr, coloraxis="coloraxis", name=label,
                                 hovertemplate="inputs %{y} and %{x}<br>cosine similarity %{z:.3f}<extra>" + label
                                 + "</extra>"), row=r + 1, col=c + 1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i + 1 if i else ''}", row=r + 1, col=c + 1)
    fig.update_xaxes(title_text="input index along the line")
    fig = base_layout(fig, "Cosine similarity (uncentred) of the input gradients of every pair of inputs on a line, "
                           "at initialisation")
    return fig.update_layout(height=380 * nrows + 100,
                             coloraxis=dict(colorscale="RdBu", reversescale=True, cmin=-1, cmax=1,
                                            colorbar=dict(title=dict(text="cosine similarity"))))


def plot_autocorrelation(results: dict) -> go.Figure:
    """Uncentred mean cosine similarity of input gradients k steps apart on the line, against k, one line per net
    (not an autocorrelation: no mean is subtracted)."""
    if not results:
        raise ValueError(_NO_RESULTS)
    fig = go.Figure()
    for label, r in results.items():
        arch = "plain" if str(label).startswith("plain") else "resnet"
        norm = "none" if "no norm" in str(label) else "batch"  # labels of correlation_matrices
        color, dash = arch_norm_style(arch, norm, label)
        fig.add_trace(go.Scatter(x=np.asarray(r.lags), y=np.asarray(r.autocorrelation), mode="lines+markers",
                                 name=label, line=dict(color=color, dash=dash, width=2),
                                 hovertemplate="lag %{x}: %{y:.3f}<extra>%{fullData.name}</extra>"))
    return base_layout(fig, "Uncentred mean cosine similarity of input gradients against distance on the line",
                       "lag (inputs apart on the line)", "mean cosine similarity", False)
