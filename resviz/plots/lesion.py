"""Figures of the lesion study (`resviz.analysis.lesion`, Veit et al. 2016): test error after removing one block,
and after removing k random blocks. The figures draw the frames `lesion_nets` returns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from resviz.plots.selection import by_run, require_rows
from resviz.plots.style import base_layout


def _single_panel(fig: go.Figure, single: pd.DataFrame) -> None:
    """Left panel: error after removing each block (diamonds: downsampling blocks), dashed: the intact net."""
    for run, g in by_run(single):
        g = g.sort_values("position", kind="stable")
        pos = g["position"].to_numpy()
        err = 100 * g["error"].to_numpy(np.float64)
        base = 100 * float(g["baseline_error"].iloc[0])
        down = g["downsample"].to_numpy(bool)
        cd = np.empty((len(g), 2), dtype=object)  # (blocks, 2): block name, change in points
        cd[:, 0], cd[:, 1] = g["block"].astype(str).to_numpy(), err - base
        fig.add_trace(go.Scatter(
            x=pos, y=err, mode="lines+markers", name=run.label, legendgroup=run.label,
            line=dict(color=run.color, width=2),
            marker=dict(symbol=np.where(down, "diamond", "circle"), size=np.where(down, 11, 6), color=run.color),
            customdata=cd,
            hovertemplate=("<b>%{customdata[0]}</b> removed<br>error %{y:.2f} % (%{customdata[1]:+.2f} points)"
                           "<extra>%{fullData.name}</extra>"),
        ), row=1, col=1)
        fig.add_trace(go.Scatter(x=[pos.min() - 0.5, pos.max() + 0.5], y=[base, base], mode="lines",
                                 name=f"{run.label} intact", legendgroup=run.label, showlegend=False,
                                 line=dict(color=run.color, dash="dash", width=1),
                                 hovertemplate=f"{run.label} intact: {base:.2f} %<extra></extra>"), row=1, col=1)
    fig.update_xaxes(title_text="removed block (position along depth)", row=1, col=1)
    fig.update_yaxes(title_text="test error (%)", row=1, col=1)


def _random_panel(fig: go.Figure, random: pd.DataFrame) -> None:
    """Right panel: error after removing k random blocks, mean ± std over draws (k = 0: the intact net), dots: draws."""
    for run, g in by_run(random):
        base = 100 * float(g["baseline_error"].iloc[0])
        stats = g.groupby("k")["error"].agg(["mean", "std", "size"]).reset_index()
        k = np.r_[0, stats["k"].to_numpy()]
        mean = np.r_[base, 100 * stats["mean"].to_numpy()]
        std = np.r_[0.0, 100 * stats["std"].fillna(0.0).to_numpy()]
        fig.add_trace(go.Scatter(x=k, y=mean, mode="lines+markers", name=run.label, legendgroup=run.label,
                                 showlegend=False, line=dict(color=run.color, width=2),
                                 error_y=dict(type="data", array=std, thickness=1),
                                 hovertemplate=("k = %{x}: %{y:.2f} % ± %{error_y.array:.2f}"
                                                "<extra>%{fullData.name}</extra>")),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=g["k"], y=100 * g["error"].to_numpy(np.float64), mode="markers",
                                 name=f"{run.label} draws", legendgroup=run.label, showlegend=False,
                                 marker=dict(color=run.color, size=5, opacity=0.35),
                                 customdata=g["removed"].astype(str) if "removed" in g.columns else None,
                                 hovertemplate=("k = %{x}: %{y:.2f} %<br>%{customdata}"
                                                "<extra>%{fullData.name}</extra>")),
                      row=1, col=2)
    fig.update_xaxes(title_text="blocks removed at random (k)", row=1, col=2)
    fig.update_yaxes(title_text="test error (%)", row=1, col=2)


def plot_lesion(single: pd.DataFrame, random: pd.DataFrame | None = None) -> go.Figure:
    """Veit et al. 2016: test error after removing each block (left; dashed: the intact net; diamonds:
    downsampling blocks) and, with `random`, after removing k random blocks (right; mean ± std over draws, dots:
    each draw). Frames from `resviz.analysis.lesion.lesion_nets` (one or several nets)."""
    require_rows(single, ("run_id", "arch", "depth", "position", "block", "downsample", "error", "baseline_error"),
                 "the first frame of resviz.analysis.lesion.lesion_nets(...)")
    cols = 2 if random is not None else 1
    fig = make_subplots(rows=1, cols=cols, horizontal_spacing=0.1,
                        subplot_titles=["remove one block", "remove k random blocks"][:cols])
    _single_panel(fig, single)
    if random is not None:
        require_rows(random, ("run_id", "arch", "depth", "k", "error", "baseline_error"),
                     "the second frame of resviz.analysis.lesion.lesion_nets(..., ks=...)")
        _random_panel(fig, random)
    return base_layout(fig, "Lesion study: test error after removing residual blocks at test time")
