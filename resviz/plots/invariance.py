"""Figures of the invariance experiment (`resviz.analysis.invariance`): Ba et al. Table 1 measured beside the
published one, and how much one example's output depends on the rest of its batch.

The figures draw the frames the analysis returns; they read columns, never the analysis module (even
the explanations come as columns of that frame).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from resviz.plots.selection import norm_order, require_rows
from resviz.plots.style import NORM_COLORS, arch_rank, base_layout, label_color

_YES, _NO, _ABSENT = "#92c5de", "#f4a582", "#f0f0f0"
_MEASURED = "resviz.analysis.invariance.measure_invariance()"


def _cell_words(frame: pd.DataFrame) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """({transformation: readable label}, {(norm, transformation): why}) from the frame's `transformation_label`
    and `why` columns (measure_invariance writes them)."""
    missing = {"transformation_label", "why"} - set(frame.columns)
    if missing:
        raise ValueError(f"invariance table lacks column(s) {sorted(missing)}: pass the frame {_MEASURED} returns")
    labels = dict(zip(frame["transformation"], frame["transformation_label"]))
    return labels, {(r.norm, r.transformation): r.why for r in frame.itertuples(index=False)}


def _grid_cells(frame: pd.DataFrame, norms: list[str], trans: list[str], labels: dict, whys: dict):
    """(z_measured, z_paper, text_measured, text_paper, hover_measured), each (norms, transformations)."""
    cell = {(r.norm, r.transformation): r for r in frame.itertuples(index=False)}
    shape = (len(norms), len(trans))
    z_m, z_p = np.full(shape, np.nan), np.full(shape, np.nan)  # 1 yes, 0 no
    text_m = np.full(shape, "", dtype=object)
    text_p = np.full(shape, "", dtype=object)
    hover_m = np.full(shape, "", dtype=object)
    for i, n in enumerate(norms):
        for j, t in enumerate(trans):
            r = cell.get((n, t))
            if r is None:
                continue
            paper = None if r.paper is None or pd.isna(r.paper) else bool(r.paper)
            z_m[i, j] = float(bool(r.invariant))
            mismatch = paper is not None and paper != bool(r.invariant)
            verdict = "yes" if r.invariant else "no"
            text_m[i, j] = f"{verdict}<br>{r.relative_deviation:.0e}" + (" ≠" if mismatch else "")
            hover_m[i, j] = (f"<b>{n} · {labels[t]}</b><br>measured: "
                             f"{'invariant' if r.invariant else 'not invariant'}"
                             f" (relative change {r.relative_deviation:.1e})<br>paper: "
                             f"{'—' if paper is None else ('yes' if paper else 'no')}<br>why: {whys[n, t]}")
            if paper is not None:
                z_p[i, j] = float(paper)
                text_p[i, j] = "yes" if paper else "no"
            else:
                text_p[i, j] = "not in<br>the paper"
    return z_m, z_p, text_m, text_p, hover_m


def plot_invariance_grid(frame: pd.DataFrame) -> go.Figure:
    """Ba et al. Table 1 measured (left) beside the published table (right): norm rows × transformation columns,
    "yes" = invariant, in the order measured. Measured cells show the relative change of the outputs; hovering a
    cell explains it. `frame` is `resviz.analysis.invariance.measure_invariance()`."""
    require_rows(frame, ("norm", "transformation", "invariant", "relative_deviation", "paper"), _MEASURED)
    norms = list(dict.fromkeys(map(str, frame["norm"])))
    trans = list(dict.fromkeys(map(str, frame["transformation"])))
    labels, whys = _cell_words(frame)
    z_m, z_p, text_m, text_p, hover_m = _grid_cells(frame, norms, trans, labels, whys)
    x = [labels[t] for t in trans]
    scale = [[0.0, _NO], [0.5, _NO], [0.5, _YES], [1.0, _YES]]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=["measured here (relative change of h)", "Ba et al. 2016, Table 1"])
    fig.add_trace(go.Heatmap(z=z_m, x=x, y=norms, text=text_m, texttemplate="%{text}", textfont=dict(size=12),
                             customdata=hover_m,
                             hovertemplate="%{customdata}<extra></extra>", colorscale=scale, zmin=0, zmax=1,
                             showscale=False, xgap=2, ygap=2, name="measured"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=np.where(np.isnan(z_p), 0.5, z_p), x=x, y=norms, text=text_p, texttemplate="%{text}",
                             textfont=dict(size=12),
                             hovertemplate="<b>%{y} · %{x}</b><br>paper: %{text}<extra></extra>",
                             colorscale=[[0.0, _NO], [0.45, _NO], [0.45, _ABSENT], [0.55, _ABSENT], [0.55, _YES],
                                         [1.0, _YES]], zmin=0, zmax=1, showscale=False, xgap=2, ygap=2,
                             name="paper"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", title_text="normalisation", row=1, col=1)
    fig.update_xaxes(tickangle=-30)
    fig = base_layout(fig, "Invariance under weight and data transformations: yes = the layer's output is unchanged")
    return fig.update_layout(height=420, margin=dict(t=90, b=110))


# ---- batch dependence ---------------------------------------------------------------------------------------
def default_batch_size(frame: pd.DataFrame) -> int:
    """The batch size a batch-dependence figure shows first: the smallest measured size above 1."""
    sizes = np.sort(pd.unique(frame["batch_size"]).astype(int))
    return int(sizes[sizes > 1][0]) if (sizes > 1).any() else int(sizes[0])


def _dependence_order(frame: pd.DataFrame, key: str) -> list[str]:
    """Labels plain before ResNet, then batch, layer, group, none (as measured for other names)."""
    first = frame.drop_duplicates(key)
    norms = norm_order(first["norm"]) if "norm" in first.columns else []

    def rank(r):
        norm = norms.index(str(r.norm)) if "norm" in first.columns else 0
        return (arch_rank(getattr(r, "arch", "")), int(getattr(r, "depth", 0)), norm)

    rows = sorted(first.itertuples(index=False), key=rank)
    return [str(getattr(r, key)) for r in rows]


def _bars_at(data: pd.DataFrame, key: str, label: str, batch_size: int) -> tuple[str, float, float, float]:
    """(label, mean, min, max) of the % change of `label` at `batch_size` (NaN when not measured)."""
    g = data[((data[key].astype(str) == label) & (data["batch_size"] == batch_size)).to_numpy()]["_pct"]
    if g.empty:
        return label, math.nan, math.nan, math.nan
    return label, float(g.mean()), float(g.min()), float(g.max())


def _dependence_styles(data: pd.DataFrame, key: str, labels: list[str]) -> dict[str, tuple[str, str]]:
    """label -> (colour of its norm, dashed for a plain net)."""
    styles = {}
    for label in labels:
        g = data[(data[key].astype(str) == label).to_numpy()]
        norm = str(g["norm"].iloc[0]) if "norm" in g.columns else label
        arch = str(g["arch"].iloc[0]) if "arch" in g.columns else "resnet"
        styles[label] = (NORM_COLORS.get(norm, label_color(label)), "dash" if arch == "plain" else "solid")
    return styles


def plot_batch_dependence(frame: pd.DataFrame, *, batch_size: int | None = None) -> go.Figure:
    """How much one example's logits change with the rest of its (train-mode) batch, in % of its logits' scale.

    Left: against batch size (line = the largest change over the draws, dots = each draw), a dotted line at
    `batch_size`. Right: each net at `batch_size` (bar = mean over draws, whiskers = min..max). `frame` is
    `batch_dependence(...)` or `batch_dependence_nets(...)`. Default batch_size: the smallest above 1."""
    require_rows(frame, ("batch_size", "draw", "max_change", "logit_scale"),
                 "resviz.analysis.invariance.batch_dependence_nets(...) or batch_dependence(...)")
    key = "net" if "net" in frame.columns else "norm"
    sizes = np.sort(pd.unique(frame["batch_size"]).astype(int))
    if batch_size is None:
        batch_size = default_batch_size(frame)
    if batch_size not in sizes:
        raise ValueError(f"batch_size={batch_size} was not measured; measured sizes: {sizes.tolist()}")
    pct = 100 * frame["max_change"].to_numpy(np.float64) / frame["logit_scale"].to_numpy(np.float64)
    data = frame.assign(_pct=pct)
    labels = _dependence_order(data, key)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                        subplot_titles=["against batch size", f"at batch size {batch_size}"])
    styles = _dependence_styles(data, key, labels)
    hov = "%{fullData.name}<br>batch size %{x}<br>change %{y:.3g} % of the logit scale<extra></extra>"
    for label in labels:  # traces 0..L-1: the largest change per batch size
        g = data[(data[key].astype(str) == label).to_numpy()]
        worst = g.groupby("batch_size")["_pct"].max()
        color, dash = styles[label]
        fig.add_trace(go.Scatter(x=worst.index.to_numpy(), y=worst.to_numpy(), mode="lines+markers", name=label,
                                 legendgroup=label, line=dict(color=color, dash=dash, width=2), hovertemplate=hov),
                      row=1, col=1)
    for label in labels:  # traces L..2L-1: every draw
        g = data[(data[key].astype(str) == label).to_numpy()]
        fig.add_trace(go.Scatter(x=g["batch_size"].to_numpy(), y=g["_pct"].to_numpy(), mode="markers",
                                 name=f"{label} draws", legendgroup=label, showlegend=False,
                                 marker=dict(color=styles[label][0], size=5, opacity=0.35), hovertemplate=hov),
                      row=1, col=1)
    for label in labels:  # traces 2L..3L-1: the chosen batch size
        _, y, lo, hi = _bars_at(data, key, label, batch_size)
        fig.add_trace(go.Bar(x=[label], y=[y], name=label, legendgroup=label, showlegend=False,
                             marker=dict(color=styles[label][0]),
                             error_y=dict(type="data", symmetric=False, array=[hi - y], arrayminus=[y - lo]),
                             hovertemplate=(f"{label}<br>batch size {batch_size}<br>mean %{{y:.3g}} %, "
                                            f"min {lo:.3g} %, max {hi:.3g} %<extra></extra>")),
                      row=1, col=2)
    fig.add_vline(x=batch_size, line=dict(color="#888", dash="dot", width=1), row=1, col=1)
    fig.update_xaxes(type="log", tickvals=sizes.tolist(), title_text="batch size (images)", row=1, col=1)
    fig.update_yaxes(title_text="change of the example's logits (% of their scale)", row=1, col=1)
    fig.update_yaxes(title_text="% of the logit scale", row=1, col=2)
    fig = base_layout(fig, f"Does one example's output depend on its batch? (train mode, batch size {batch_size})")
    return fig.update_layout(legend=dict(title=dict(text="net")))
