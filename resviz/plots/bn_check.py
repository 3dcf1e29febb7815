"""Figure of the BN γ/β cross-check (`resviz.analysis.bn_check`): each BN layer's measured response std against the
prediction sqrt(mean γ² + var β) from its weights. It draws the `cross_check(...)` frame.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from resviz.plots.selection import by_run, require_columns
from resviz.plots.style import base_layout


def plot_bn_check(table: pd.DataFrame) -> go.Figure:
    """The BN γ/β cross-check: measured response std (y) against sqrt(mean γ² + var β) from the weights (x),
    one dot per BN layer, one colour per run, with the line measured = predicted. `table` is
    `resviz.analysis.bn_check.cross_check(...)`."""
    require_columns(table, ("run_id", "layer", "layer_index", "measured", "predicted"), "cross-check table",
                    "pass resviz.analysis.bn_check.cross_check(nets, stats)")
    if table.empty:
        raise ValueError("the cross-check table is empty; "
                         "measure some networks with resviz.analysis.bn_check.measure first")
    fig = go.Figure()
    for run, g in by_run(table):
        g = g.sort_values("layer_index", kind="stable")
        cd = np.empty((len(g), 3), dtype=object)  # (L, 3): layer, index, ratio
        cd[:, 0], cd[:, 1] = g["layer"].astype(str).to_numpy(), g["layer_index"].to_numpy()
        cd[:, 2] = (g["measured"] / g["predicted"]).to_numpy(np.float64)
        fig.add_trace(go.Scatter(
            x=g["predicted"].to_numpy(np.float64), y=g["measured"].to_numpy(np.float64), mode="markers",
            name=run.label, marker=dict(color=run.color, size=7, line=dict(width=0.5, color="white")),
            customdata=cd,
            hovertemplate=("<b>%{customdata[0]}</b> (index %{customdata[1]})<br>predicted %{x:.4g}<br>"
                           "measured %{y:.4g}<br>ratio %{customdata[2]:.3f}<extra>%{fullData.name}</extra>"),
        ))
    values = np.r_[table["measured"].to_numpy(np.float64), table["predicted"].to_numpy(np.float64)]
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="measured = predicted",
                             line=dict(color="#888", dash="dash", width=1), hoverinfo="skip"))
    return base_layout(fig, "BN cross-check: measured response std vs the γ/β prediction",
                       "predicted: √(mean γ² + var β) (a.u.)", "measured response std (a.u.)", False)
