"""The report's figure set: every standard figure the tables can make, and why each other one was skipped."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from resviz.plots.depth import (
    plot_branch_skip,
    plot_gradient_flow,
    plot_heatmap,
    plot_response_std,
    plot_signal_propagation,
)
from resviz.plots.selection import metric_rows
from resviz.plots.training import plot_error_vs_depth, plot_training_curves


def standard_figures(
    stats: pd.DataFrame, metrics: pd.DataFrame | None = None, *, step: int | None = None,
) -> tuple[dict[str, go.Figure], dict[str, str]]:
    """The report's figures for whatever the tables hold: (name -> figure, name -> why it was skipped)."""
    evaluated = "metric" in stats.columns and bool((stats["metric"].astype(str) == "response_std_eval").any())
    makers = {
        "training_curves": (lambda: plot_training_curves(metrics, step=step)) if metrics is not None else None,
        "response_std": lambda: plot_response_std(stats, step=step),
        "response_std_sorted": lambda: plot_response_std(stats, step=step, sort=True),
        # Fig. 7 above is the eval-mode measurement where recorded; the train-mode one of every run beside it
        "response_std_train_mode": (lambda: plot_response_std(stats, step=step, metric="response_std"))
        if evaluated else False,
        "grad_norm": lambda: plot_gradient_flow(stats, "grad_norm", step=step),
        "act_grad_norm": lambda: plot_gradient_flow(stats, "act_grad_norm", step=step),
        "branch_skip": lambda: plot_branch_skip(stats, step=step),
        "signal_propagation": lambda: plot_signal_propagation(stats, step=step),
        "error_vs_depth": (lambda: plot_error_vs_depth(metrics)) if metrics is not None else None,
    }
    figs: dict[str, go.Figure] = {}
    skipped: dict[str, str] = {}
    for name, make in makers.items():
        if make is False:  # not this table's figure (the train-mode Fig. 7 is the one above)
            continue
        if make is None:
            skipped[name] = "no training table"
            continue
        try:
            figs[name] = make()
        except ValueError as err:
            skipped[name] = str(err)
    if "response_std" in figs:
        ids = sorted(map(str, pd.unique(metric_rows(stats, "response_std")["run_id"].astype(str))))
        for rid in ids:  # each on its own colour scale (said in its caption): a run's structure stays visible
            figs[f"heatmap_response_std_{rid or 'run'}"] = plot_heatmap(stats, "response_std", run=rid, step=step)
    return figs, skipped
