"""Dashboards around the figures of `resviz.plots`: a `go.FigureWidget` built once, controls wired with
`observe(..., names="value")`, traces swapped inside `batch_update()`.

    dashboard   explore(runs): one metric against depth, sliders for depth and step, sort, refresh, export
    source      where the tables come from (run folder, glob, RunSet, frames) and the runs' status line
    labs        widgets of the lab notebooks: batch_size_explorer
    view        what every widget shares: displaying it displays its container

The sliders read the table pivoted once by `resviz.plots.series`.
"""
from __future__ import annotations

from resviz.widgets.dashboard import Dashboard, explore
from resviz.widgets.labs import BatchSizeExplorer, batch_size_explorer

__all__ = ["BatchSizeExplorer", "Dashboard", "batch_size_explorer", "explore"]
