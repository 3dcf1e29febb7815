"""Figure of Balduzzi et al.'s own shattered-gradients experiment (`resviz.analysis.shattered`, SETTING_1D): a
fully connected net of one scalar input, the input swept over [-2, 2], d out / d x at each point, and how fast
that series decorrelates with depth. The image-space adaptation has its own figure (`plots/shattered.py`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from resviz.plots.selection import require_rows
from resviz.plots.style import HEIGHT, arch_name, arch_norm_style, arch_rank, base_layout


def plot_shattering_1d(frame: pd.DataFrame, lag: int = 1) -> go.Figure:
    """Autocorrelation at `lag` of d out / d x along the 1-D input against depth, one line per (architecture,
    norm): mean over seeds, whiskers min..max. `frame` is `resviz.analysis.shattered.shattering_1d_vs_depth(...)`;
    the title says the setting and the number of seeds."""
    require_rows(frame, ("setting", "arch", "norm", "depth", "seed", "lag", "autocorrelation"),
                 "resviz.analysis.shattered.shattering_1d_vs_depth(...)")
    sub = frame[(frame["lag"] == lag).to_numpy()]
    if not len(sub):
        raise ValueError(f"lag={lag} is not in the frame; use one of {sorted(pd.unique(frame['lag']))}")
    fig = go.Figure()
    if "bn_mode" not in sub.columns:  # frames from before the bn_mode column: calibrated eval for BN nets
        sub = sub.assign(bn_mode=np.where(sub["norm"] == "batch", "calibrated eval", "no BN"))
    order = sorted(sub.groupby(["arch", "norm", "bn_mode"]).groups, key=lambda t: (arch_rank(t[0]), t[1], t[2]))
    for arch, norm, mode in order:
        g = sub[((sub["arch"] == arch) & (sub["norm"] == norm) & (sub["bn_mode"] == mode)).to_numpy()]
        name = net_name(arch, norm, mode)
        color, dash = arch_norm_style(arch, norm, name)
        dash = "dot" if "train" in mode else dash
        s = g.groupby("depth")["autocorrelation"].agg(["mean", "min", "max"]).reset_index()
        fig.add_trace(go.Scatter(
            x=s["depth"], y=s["mean"], mode="lines+markers", name=name, line=dict(color=color, dash=dash, width=2),
            error_y=dict(type="data", symmetric=False, array=s["max"] - s["mean"], arrayminus=s["mean"] - s["min"],
                         thickness=1),
            hovertemplate="depth %{x}: %{y:.3f}<extra>%{fullData.name}</extra>"))
    seeds = sub["seed"].nunique()
    setting = "; ".join(map(str, pd.unique(sub["setting"])))
    fig.update_xaxes(title_text="depth (ReLU layers)", type="log", tickvals=sorted(pd.unique(sub["depth"])))
    fig.update_yaxes(title_text=f"lag-{lag} autocorrelation of ∂out/∂x")
    fig = base_layout(fig, f"Shattered gradients at initialisation — {setting}; mean over {seeds} seed(s), "
                           "whiskers min..max")
    return fig.update_layout(height=HEIGHT, legend=dict(title=dict(text="net")))


def net_name(arch: str, norm: str, bn_mode: str) -> str:
    """e.g. "ResNet, BN (train, per point)" or "plain, no norm"."""
    return f"{arch_name(arch)}, BN ({bn_mode})" if norm == "batch" else f"{arch_name(arch)}, no norm"


def _panel_traces(fig, curves: pd.DataFrame, gradients: pd.DataFrame, arch: str, depth: int, col: int,
                  shown: set) -> None:
    """One panel column: d out / d x against x (row 1, the first seed) and the autocorrelation against lag with
    its interval band (row 2), one line per BN mode; each net's name enters the legend once (`shown`)."""
    for row, frame in ((1, gradients), (2, curves)):
        mine = frame[((frame["arch"] == arch) & (frame["depth"] == depth) & (frame["norm"] == "batch")).to_numpy()]
        for mode, g in mine.groupby("bn_mode", sort=True):
            name = net_name(arch, "batch", mode)
            color, _ = arch_norm_style(arch, "batch", name)
            dash = "dot" if "train" in mode else "solid"
            style = dict(name=name, legendgroup=name, showlegend=row == 2 and name not in shown,
                         line=dict(color=color, dash=dash))
            if row == 2:
                shown.add(name)
            if row == 1:
                g = g[g["seed"] == g["seed"].min()]
                fig.add_trace(go.Scatter(x=g["x"], y=g["gradient"], mode="lines", **style,
                                         hovertemplate="x %{x:.3f}: %{y:.4g}<extra>%{fullData.name}</extra>"),
                              row=1, col=col)
                continue
            g = g.sort_values("lag")
            fig.add_trace(go.Scatter(x=np.r_[g["lag"], g["lag"][::-1]], y=np.r_[g["hi"], g["lo"][::-1]],
                                     fill="toself", line=dict(width=0), fillcolor=color, opacity=0.2, legendgroup=name,
                                     showlegend=False, hoverinfo="skip"), row=2, col=col)
            fig.add_trace(go.Scatter(x=g["lag"], y=g["mean"], mode="lines", customdata=g["n"], **style,
                                     hovertemplate="lag %{x}: %{y:.3f} (mean of %{customdata} seeds)"
                                                   "<extra>%{fullData.name}</extra>"), row=2, col=col)


def plot_shattering_panels(curves: pd.DataFrame, gradients: pd.DataFrame, panels) -> go.Figure:
    """Balduzzi et al.'s Figs. 1-2 as panels: per net of `panels` ((title, arch, depth), e.g.
    `resviz.analysis.shattered_1d.PANELS`: feedforward depth 1 and 24, ResNet depth 50, all with BN), the
    gradient d out / d x along the line (top, first seed) and its autocorrelation against lag (bottom: mean over
    seeds and 95 % t interval), one line per BN mode. `curves`: `acf_curves(...)`; `gradients`:
    `gradients_1d_frame(...)`, both with the bn_mode column."""
    require_rows(curves, ("arch", "norm", "bn_mode", "depth", "lag", "mean", "lo", "hi", "n"),
                 "resviz.analysis.shattered_1d.acf_curves(...)")
    require_rows(gradients, ("arch", "norm", "bn_mode", "depth", "seed", "x", "gradient"),
                 "resviz.analysis.shattered.gradients_1d_frame(..., bn_modes=...)")
    fig = make_subplots(rows=2, cols=len(panels), subplot_titles=[t for t, _, _ in panels] + [""] * len(panels),
                        vertical_spacing=0.14, horizontal_spacing=0.07)
    shown: set = set()
    for col, (_, arch, depth) in enumerate(panels, start=1):
        _panel_traces(fig, curves, gradients, arch, depth, col, shown)
    points = int(gradients.groupby(["arch", "depth", "bn_mode", "seed"]).size().max())
    low, high = float(gradients["x"].min()), float(gradients["x"].max())
    fig.update_xaxes(title_text="input x", row=1)
    fig.update_xaxes(title_text=f"lag (points apart, of {points} on [{low:g}, {high:g}])", row=2)
    fig.update_yaxes(title_text="∂out/∂x", row=1, col=1)
    fig.update_yaxes(title_text="autocorrelation", row=2, col=1)
    seeds = int(curves["n"].max())
    fig = base_layout(fig, f"Shattered gradients at initialisation, Balduzzi et al.'s panels — gradient (top, one "
                           f"seed) and its autocorrelation (bottom: mean, band 95 % interval over {seeds} seeds)")
    return fig.update_layout(height=HEIGHT + 250, legend=dict(title=dict(text="net (BN mode)")))


__all__ = ["net_name", "plot_shattering_1d", "plot_shattering_panels"]
