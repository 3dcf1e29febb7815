"""Figure of Balduzzi et al.'s own shattered-gradients experiment (`resviz.analysis.shattered`, SETTING_1D): a
fully connected net of one scalar input, the input swept over [-2, 2], d out / d x at each point, and how fast
that series decorrelates with depth. The image-space adaptation has its own figure (`plots/shattered.py`).
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

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
    order = sorted(sub.groupby(["arch", "norm"]).groups, key=lambda t: (arch_rank(t[0]), t[1]))
    for arch, norm in order:
        g = sub[((sub["arch"] == arch) & (sub["norm"] == norm)).to_numpy()]
        name = f"{arch_name(arch)}, {'BN' if norm == 'batch' else 'no norm'}"
        color, dash = arch_norm_style(arch, norm, name)
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


__all__ = ["plot_shattering_1d"]
