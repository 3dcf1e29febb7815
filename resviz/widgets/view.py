"""What every resviz widget shares: a notebook displays the object by displaying its `widget` container."""
from __future__ import annotations

import ipywidgets as widgets
from IPython.display import display


class View:
    """Base of the dashboards: `self.widget` (set by the subclass) is what a notebook shows."""

    widget: widgets.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        display(self.widget)
