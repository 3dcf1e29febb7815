"""Widgets for the lab notebooks (05-08), built around the pure figures of `resviz.plots`.

`batch_size_explorer(frame)`: a slider over the batch sizes of a batch-dependence measurement
(`resviz.analysis.invariance.batch_dependence_nets`): how much one example's output moves with the rest of its
batch, per net, at the chosen size. Moving the slider redraws the right panel, the marker and the summary line
inside one `batch_update()`; nothing is recomputed but the figure.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from resviz.analysis.invariance import summarise_batch_dependence
from resviz.plots.invariance import default_batch_size, plot_batch_dependence
from resviz.widgets.view import View


class BatchSizeExplorer(View):
    """A batch-size slider, the batch-dependence figure and a one-line summary; display the object in a notebook.

    `slider.value = 16` from Python drives it as a click does.
    """

    def __init__(self, frame: pd.DataFrame, *, batch_size: int | None = None):
        first = plot_batch_dependence(frame, batch_size=batch_size)  # validates the frame
        self.frame = frame
        self._labels = list(dict.fromkeys(frame["net" if "net" in frame.columns else "norm"].astype(str)))
        sizes = [int(b) for b in np.sort(pd.unique(frame["batch_size"]))]
        chosen = int(batch_size) if batch_size is not None else default_batch_size(frame)
        self.figure = go.FigureWidget(first)
        self.slider = widgets.SelectionSlider(options=[(str(b), b) for b in sizes], value=chosen,
                                              description="batch size", continuous_update=True,
                                              layout=widgets.Layout(width="60%"))
        self.summary = widgets.HTML(value="")
        self.slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([self.slider, self.figure, self.summary])
        self._describe(chosen)

    @property
    def batch_size(self) -> int:
        return int(self.slider.value)

    def _on_change(self, change) -> None:
        self.show(int(change["new"]))

    def show(self, batch_size: int) -> None:
        """Redraw the right panel, the marker and the summary for `batch_size`."""
        new = plot_batch_dependence(self.frame, batch_size=batch_size)
        n = len(self._labels)
        with self.figure.batch_update():
            for mine, fresh in zip(self.figure.data[2 * n : 3 * n], new.data[2 * n : 3 * n]):
                mine.update(y=fresh.y, error_y=fresh.error_y, hovertemplate=fresh.hovertemplate)
            self.figure.layout.shapes = new.layout.shapes
            self.figure.layout.annotations = new.layout.annotations
            self.figure.layout.title.text = new.layout.title.text
        self._describe(batch_size)

    def _describe(self, batch_size: int) -> None:
        table = summarise_batch_dependence(self.frame)
        at = table[table["batch_size"] == batch_size]
        parts = [f"<b>{html.escape(str(r.net))}</b>: {r.mean_change_pct:.3g} % (max {r.max_change_pct:.3g} %)"
                 for r in at.itertuples(index=False)]
        self.summary.value = (f"At batch size {batch_size}, one example's logits move by (mean over draws, % of their "
                              "scale): " + "; ".join(parts))


def batch_size_explorer(frame: pd.DataFrame, *, batch_size: int | None = None) -> BatchSizeExplorer:
    """The batch-size slider over `batch_dependence_nets(...)` (or `batch_dependence(...)`) rows."""
    return BatchSizeExplorer(frame, batch_size=batch_size)
