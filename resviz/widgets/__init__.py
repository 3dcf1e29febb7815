"""Dashboards around the figures of `resviz.plots`: a `go.FigureWidget` built once, controls wired with
`observe(..., names="value")`, traces swapped inside `batch_update()`.

    dashboard   explore(runs): one metric against depth, sliders for depth and step, sort, refresh, export
    series      the dashboard's cache: the stats table pivoted into per-(run, metric) (steps, layers) arrays
    source      where the tables come from (run folder, glob, RunSet, frames) and the runs' status line
    labs        widgets of the lab notebooks: batch_size_explorer
    view        what every widget shares: displaying it displays its container
"""
from __future__ import annotations

from resviz.widgets.dashboard import ALL, CONTINUOUS_MAX_POINTS, Dashboard, explore
from resviz.widgets.labs import BatchSizeExplorer, batch_size_explorer
from resviz.widgets.series import Series, pivot
from resviz.widgets.source import load_source, status_summary

__all__ = [
    "ALL", "CONTINUOUS_MAX_POINTS", "BatchSizeExplorer", "Dashboard", "Series", "batch_size_explorer", "explore",
    "load_source", "pivot", "status_summary",
]
