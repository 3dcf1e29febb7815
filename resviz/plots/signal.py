"""Figures of signal propagation (`resviz.analysis.signal`, Brock et al. 2021; SkipInit / ReZero / Fixup): the
signal propagation plot of several nets at initialisation, and the learnable branch scales over training.
Both draw tidy stats tables (a Recorder's, or `signal_at_init`'s).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from resviz.plots.selection import metric_rows, pick_step, require_rows
from resviz.plots.style import (
    HEIGHT,
    STEP_AXIS,
    VARIANT_DASHES,
    axis_title,
    base_layout,
    label_color,
    short_run_names,
    step_text,
)
from resviz.plots.words import depth_title, facts

_PANELS = ["E[x²] at each block's output (squared mean + variance)", "squared channel mean at each block's output",
           "channel variance at the end of the residual branch"]
_Y_TITLES = ("E[x²] (a.u.²)", "squared channel mean (a.u.²)", "branch variance (a.u.²)")
_HOVER = "<b>%{customdata}</b><br>%{y:.4g}<extra>%{fullData.name}</extra>"


def _signal_rows(frame: pd.DataFrame, step) -> dict[str, pd.DataFrame]:
    """run_id -> rows at `step` (default each run's last), averaged over seeds: (layer, layer_index, metric)."""
    out = {}
    for run in dict.fromkeys(frame["run_id"].astype(str)):
        g = frame[(frame["run_id"].astype(str) == run).to_numpy()]
        s = pick_step(np.unique(g["step"].to_numpy()), step)
        g = g[(g["step"] == s).to_numpy()]
        out[run] = (g.assign(layer=g["layer"].astype(str), metric=g["metric"].astype(str))
                    .groupby(["layer_index", "layer", "metric"], as_index=False)["value"].mean().assign(step=s))
    return out


def _net_traces(fig: go.Figure, g: pd.DataFrame, run: str) -> None:
    """One net's three lines: E[x²] and the squared mean at block outputs, the variance at branch ends."""
    color, dash = label_color(run), VARIANT_DASHES.get(run, "solid")
    out = g[g["layer"].str.endswith(".probe_out")].pivot(index=["layer_index", "layer"], columns="metric",
                                                            values="value").reset_index()
    branch = g[g["layer"].str.endswith(".probe_branch") & (g["metric"] == "channel_var")]
    if {"channel_sq_mean", "channel_var"} <= set(out.columns):
        fig.add_trace(go.Scatter(x=out["layer_index"], y=out["channel_sq_mean"] + out["channel_var"],
                                 mode="lines+markers", marker=dict(size=4), name=run, legendgroup=run,
                                 line=dict(color=color, width=2, dash=dash), customdata=out["layer"],
                                 hovertemplate=_HOVER), row=1, col=1)
        fig.add_trace(go.Scatter(x=out["layer_index"], y=out["channel_sq_mean"], mode="lines+markers",
                                 marker=dict(size=4), name=run, legendgroup=run, showlegend=False,
                                 line=dict(color=color, width=2, dash=dash), customdata=out["layer"],
                                 hovertemplate=_HOVER),
                      row=2, col=1)
    if len(branch):
        y = branch["value"].to_numpy(np.float64)
        zero = bool((y == 0).all())
        fig.add_trace(go.Scatter(x=branch["layer_index"], y=np.where(y > 0, y, np.nan), mode="lines+markers",
                                 marker=dict(size=4), name=f"{run} (branch ≡ 0)" if zero else run,
                                 legendgroup=run, showlegend=zero, line=dict(color=color, width=2, dash="dot"),
                                 customdata=branch["layer"], hovertemplate=_HOVER), row=3, col=1)


def plot_signal_propagation_init(frame: pd.DataFrame, *, step: int | None = None) -> go.Figure:
    """Brock et al. 2021's signal propagation plot for several nets (one colour per run_id, e.g. the variants of
    `resviz.analysis.signal.signal_at_init`): E[x²] = squared channel mean + channel variance at each block's
    output, the squared channel mean alone, and the variance at the end of the residual branch; log scales.
    A branch whose variance is exactly 0 (SkipInit, ReZero, Fixup at init) is named "≡ 0" and not drawn.
    Legend names are the run ids, shortened to what tells them apart (`short_run_names`)."""
    require_rows(frame, ("run_id", "layer", "layer_index", "metric", "value", "step"),
                 "resviz.analysis.signal.signal_at_init(...) or a stats table with channel_sq_mean / channel_var")
    rows = frame[frame["metric"].astype(str).isin(["channel_sq_mean", "channel_var"]).to_numpy()]
    if rows.empty:
        raise ValueError("no channel_sq_mean / channel_var rows; record them (signal_propagation, or a Recorder)")
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=_PANELS)
    by_run = _signal_rows(rows, step)
    names = short_run_names(by_run)
    for run_id, g in by_run.items():
        _net_traces(fig, g, names[run_id])
    for r, title in enumerate(_Y_TITLES, start=1):
        fig.update_yaxes(type="log", title_text=title, row=r, col=1)
    fig.update_xaxes(title_text=depth_title("channel_var", facts(rows)), row=3, col=1)
    chosen = [int(g["step"].iloc[0]) for g in by_run.values()]
    fig = base_layout(fig, f"Signal propagation — {step_text(chosen, step)}")
    return fig.update_layout(height=HEIGHT + 350, legend=dict(title=dict(text="net")))


def plot_branch_scales(stats: pd.DataFrame, *, runs=None) -> go.Figure:
    """The learnable branch scales α (SkipInit / ReZero / Fixup) of every block over training: one panel per run,
    one line per block, darker = deeper; panels titled by `short_run_names`. `stats`: a run's tidy table (the
    Recorder records `branch_scale`)."""
    rows = metric_rows(stats, "branch_scale", runs=runs)
    ids = list(dict.fromkeys(rows["run_id"].astype(str))) if "run_id" in rows.columns else [""]
    names = short_run_names(ids)
    fig = make_subplots(rows=1, cols=len(ids), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[names[i] for i in ids])
    for c, rid in enumerate(ids, start=1):
        g = rows[(rows["run_id"].astype(str) == rid).to_numpy()] if "run_id" in rows.columns else rows
        layers = g.drop_duplicates("layer").sort_values("layer_index")
        n = max(len(layers) - 1, 1)
        for k, (name, li) in enumerate(zip(layers["layer"].astype(str), layers["layer_index"])):
            b = g[(g["layer"].astype(str) == name).to_numpy()].sort_values("step")
            block = name.removesuffix(".branch_scale")
            fig.add_trace(go.Scatter(
                x=b["step"], y=b["value"], mode="lines", name=block, legendgroup=block, showlegend=c == 1,
                line=dict(color=sample_colorscale("Viridis", [0.6 * (1 - k / n)])[0], width=1.5),  # readable on white
                hovertemplate=f"<b>{block}</b> (index {li})<br>step %{{x}}: α = %{{y:.4g}}<extra>{rid}</extra>"),
                row=1, col=c)
        fig.update_xaxes(title_text=STEP_AXIS, row=1, col=c)
    fig.update_yaxes(title_text=axis_title("branch_scale"), row=1, col=1)
    fig = base_layout(fig, "Learnable branch scales α over training (darker = deeper block)")
    return fig.update_layout(legend=dict(title=dict(text="block")))
