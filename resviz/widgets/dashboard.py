"""`explore(runs)`: a dashboard of one metric against depth, with sliders for depth and training step.

The stats table is pivoted once per load (`resviz.plots.series.pivot`). A control move picks each run's row and
moves the traces and axes that `resviz.plots.depth.profile_traces` / `profile_axes` draw of it (the engine behind
`plots.plot_profile`) into one `go.FigureWidget` inside `batch_update()`; the shared layout comes from
`resviz.plots.style.base_layout`. Every error ends up in `dashboard.message`, never as a traceback in the notebook.
"""
from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from resviz import export as export_mod
from resviz.plots.depth import profile_axes, profile_traces
from resviz.plots.selection import pick_step
from resviz.plots.series import Series, pivot
from resviz.plots.style import arch_name, arch_rank, base_layout, short_title
from resviz.schema import METRICS
from resviz.widgets.source import load_source, status_summary
from resviz.widgets.view import View

ALL = "all"
CONTINUOUS_MAX_POINTS = 1_000  # sliders redraw while dragging only when a view has fewer points than this


def _changed(spec: dict, last: dict) -> dict:
    """The keywords of `spec` that differ from `last`: each plotly property set costs its validation, and a step
    move changes only y (and a sort the order), not colours, names or hover."""
    out = {}
    for k, v in spec.items():
        old = last.get(k)
        same = (np.array_equal(v, old) if isinstance(v, np.ndarray) and isinstance(old, np.ndarray)
                and v.dtype == old.dtype else not isinstance(v, np.ndarray) and k in last and old == v)
        if not same:
            out[k] = v
    return out


class Dashboard(View):
    """Depth and step sliders, metric / architecture dropdowns, a sort toggle, refresh and export, one figure.

    Controls are attributes (set `.value` from Python to drive it); display the object in a notebook.
    """

    def __init__(self, source, *, metric: str | None = None, arch: str = ALL, depth: int | None = None,
                 step: int | None = None, sort: bool = False, export_folder: str | os.PathLike = "figures"):
        self._source = source
        self._wanted = dict(metric=metric, arch=arch, depth=depth, step=step)
        self._data: dict[str, list[Series]] = {}
        self._group: list[Series] = []
        self._shown: list[dict] = []  # per trace of the FigureWidget: the keywords it was last given
        self._busy = False
        self.last_export: list[Path] = []

        self.figure = go.FigureWidget(layout=base_layout(go.Figure(), "").layout)
        self.depth_slider = widgets.SelectionSlider(options=[("–", -1)], description="depth", disabled=True)
        self.step_slider = widgets.SelectionSlider(options=[("–", -1)], description="step", disabled=True,
                                                   layout=widgets.Layout(width="45%"))
        self.metric_dropdown = widgets.Dropdown(options=[("–", "")], description="metric")
        self.arch_dropdown = widgets.Dropdown(options=[(ALL, ALL)], description="arch")
        self.sort_toggle = widgets.ToggleButton(value=sort, description="sorted", icon="sort-amount-desc",
                                                tooltip="sort each run's values, descending (He et al. Fig. 7, bottom)")
        self.refresh_button = widgets.Button(description="refresh", icon="refresh",
                                             tooltip="reload the run folder(s): picks up rows of runs still training")
        self.export_folder = widgets.Text(value=str(export_folder), description="folder")
        self.export_formats = widgets.SelectMultiple(options=("html", "png", "svg", "pdf"), value=("html", "png"),
                                                     description="formats", rows=4)
        self.export_button = widgets.Button(description="Export", icon="download", button_style="primary")
        self.message = widgets.HTML(value="")

        for w in (self.depth_slider, self.metric_dropdown, self.arch_dropdown):
            w.observe(self._guard(self._on_group), names="value")
        for w in (self.step_slider, self.sort_toggle):
            w.observe(self._guard(self._on_view), names="value")
        self.refresh_button.on_click(lambda _: self._guard(self.refresh)())
        self.export_button.on_click(lambda _: self._guard(self.export)())

        self.widget = widgets.VBox([
            widgets.HBox([self.depth_slider, self.step_slider]),
            widgets.HBox([self.metric_dropdown, self.arch_dropdown, self.sort_toggle, self.refresh_button]),
            self.figure,
            widgets.HBox([self.export_folder, self.export_formats, self.export_button]),
            self.message,
        ])
        self._guard(self.refresh)()

    # ---- errors -------------------------------------------------------------------------------------
    def _say(self, text: str, kind: str = "info") -> None:
        color = {"error": "#b00020", "info": "#333"}[kind]
        self.message.value = f'<span style="color:{color}">{html.escape(text, quote=False)}</span>'

    def _guard(self, fn: Callable) -> Callable:
        def run(*args):
            if self._busy:
                return None
            try:
                return fn(*args)
            except Exception as err:  # noqa: BLE001 - shown to the user, not raised into the notebook
                self._say(f"{type(err).__name__}: {err}" if not isinstance(err, (ValueError, FileNotFoundError))
                          else str(err), "error")
                return None
        return run

    # ---- data ---------------------------------------------------------------------------------------
    def _no_data(self, status) -> None:
        """Empty the figure and raise the reason there is nothing to show (shown in `message`)."""
        self._data, self._group = {}, []
        self._redraw()
        if status is not None and len(status) == 0:
            raise FileNotFoundError(
                f"no run folders found in {self._source}: a run folder holds config.json "
                "(resviz train writes one); start a run and press refresh"
            )
        summary = status_summary(status)
        raise ValueError(
            "no per-layer statistics to show" + (f"; {summary}" if summary else "")
            + "; record some with resviz train (or a Recorder) and press refresh"
        )

    def refresh(self) -> None:
        """(Re)load the source: a run folder that is still training gains its new rows."""
        at_last = bool(self._group) and self.step_slider.value == self.step_slider.options[-1][1]
        keep = dict(metric=self.metric_dropdown.value or self._wanted["metric"],
                    arch=self.arch_dropdown.value, depth=self.depth_slider.value,
                    step=None if at_last else self.step_slider.value)
        if not self._data:
            keep = dict(self._wanted)
        stats, _, status = load_source(self._source)
        data = pivot(stats)
        self.message.value = ""
        if not data:
            self._no_data(status)
        self._data = data
        metrics = [m for m in METRICS if m in self._data] + sorted(set(self._data) - set(METRICS))
        note = ""
        if keep["metric"] is None:  # Fig. 7 as the paper measures it when recorded (eval mode, held-out images)
            keep["metric"] = next((m for m in ("response_std_eval", "response_std") if m in self._data), metrics[0])
        if keep["metric"] not in self._data:
            note = f"no {keep['metric']!r} rows; showing {metrics[0]!r} (metrics present: {metrics})"
            keep["metric"] = metrics[0]
        self._set_options(keep, metrics)
        self._redraw()
        summary = status_summary(status)
        if note or summary:
            self._say("; ".join(t for t in (note, summary) if t))

    def _set_options(self, keep: dict, metrics: list[str] | None = None) -> None:
        """Metric (when given), arch, depth and step options, keeping the current choices where possible; the
        observers stay quiet meanwhile (one redraw follows)."""
        self._busy = True
        try:
            if metrics is not None:
                self.metric_dropdown.options = [(m, m) for m in metrics]
                self.metric_dropdown.value = keep["metric"]
            self._set_group(keep)
        finally:
            self._busy = False

    def _set_group(self, keep: dict) -> None:
        """Arch, depth and step options for the chosen metric, keeping the current choices where possible."""
        series = self._data[self.metric_dropdown.value]
        archs = sorted({s.run.arch for s in series}, key=arch_rank)
        self.arch_dropdown.options = [(ALL, ALL)] + [(arch_name(a), a) for a in archs]
        self.arch_dropdown.value = keep["arch"] if keep["arch"] in archs else ALL
        arch = self.arch_dropdown.value
        chosen = [s for s in series if arch == ALL or s.run.arch == arch]
        depths = sorted({s.run.depth for s in chosen})
        want = keep["depth"] if keep["depth"] is not None and keep["depth"] >= 0 else depths[0]
        depth = min(depths, key=lambda d: (abs(d - want), d))
        self.depth_slider.options = [(str(d), d) for d in depths]
        self.depth_slider.value = depth
        self.depth_slider.disabled = len(depths) < 2
        self._group = [s for s in chosen if s.run.depth == depth]
        steps = np.unique(np.concatenate([s.steps for s in self._group]))
        step = pick_step(steps, keep["step"])
        self.step_slider.options = [(str(s), int(s)) for s in steps]
        self.step_slider.value = step
        self.step_slider.disabled = len(steps) < 2
        points = sum(s.values.shape[1] for s in self._group)
        for w in (self.depth_slider, self.step_slider):
            w.continuous_update = points < CONTINUOUS_MAX_POINTS

    def _on_group(self, change) -> None:
        if not self._data:
            return
        keep = dict(metric=self.metric_dropdown.value, arch=self.arch_dropdown.value,
                    depth=self.depth_slider.value, step=self.step_slider.value)
        self._set_options(keep)
        self._redraw()

    def _on_view(self, change) -> None:
        if self._group:
            self._redraw()

    # ---- drawing ------------------------------------------------------------------------------------
    def title(self) -> str:
        metric, step = self.metric_dropdown.value, self.step_slider.value
        arch = self.arch_dropdown.value
        archs = dict.fromkeys(arch_name(s.run.arch) for s in self._group)  # plain first
        what = " and ".join(archs) if arch == ALL else arch_name(arch)
        sort = " (sorted)" if self.sort_toggle.value else ""
        return f"{short_title(metric)}{sort} — depth {self.depth_slider.value}, {what}, step {step}"

    def _redraw(self) -> None:
        """Move the current view's traces and axes, as `profile_traces` / `profile_axes` draw them from the
        cached arrays, into the FigureWidget; spare traces are hidden, not removed.

        The same keywords make `profile_figure`; building that figure first would cost more than the
        redraw itself (validation twice, the template copied), hence the keywords.
        """
        fig = self.figure
        if not self._group:
            with fig.batch_update():
                for trace in fig.data:
                    trace.update(x=[], y=[], visible=False)
                fig.layout.title.text = "no data"
            self._shown = [{} for _ in fig.data]
            for w in (self.depth_slider, self.step_slider):
                w.disabled = True
            return
        metric, step, sort = self.metric_dropdown.value, self.step_slider.value, self.sort_toggle.value
        profs = [s.profile(step) for s in self._group]
        traces = profile_traces(profs, metric, sort=sort, widget_hover=True)
        if len(fig.data) < len(traces):
            fig.add_traces([go.Scatter() for _ in range(len(traces) - len(fig.data))])
            self._shown += [{} for _ in range(len(fig.data) - len(self._shown))]
        with fig.batch_update():
            for k, (mine, spec) in enumerate(zip(fig.data, traces)):
                mine.update(_changed(spec, self._shown[k]), visible=True)
                self._shown[k] = spec
            for k, trace in enumerate(fig.data[len(traces):], start=len(traces)):
                trace.update(x=[], y=[], visible=False)
                self._shown[k] = {}
            fig.layout.update(profile_axes(profs, metric, sort=sort, step=step, title=self.title()))

    # ---- export -------------------------------------------------------------------------------------
    def export(self, folder: str | os.PathLike | None = None, formats=None) -> list[Path]:
        """Write the current figure to the chosen folder and formats; the paths are shown in `message`."""
        if not self._group:
            raise ValueError("nothing to export yet: no figure is drawn")
        folder = folder if folder is not None else self.export_folder.value
        formats = formats if formats is not None else self.export_formats.value
        arch = self.arch_dropdown.value
        name = (f"{self.metric_dropdown.value}_depth{self.depth_slider.value}_{arch}_step{self.step_slider.value}"
                + ("_sorted" if self.sort_toggle.value else ""))
        fig = go.Figure(self.figure.to_dict())
        try:
            paths = export_mod.export(fig, folder, formats, names=[name])
        except export_mod.BrowserNotFoundError as err:
            self.last_export = list(err.written)
            self._say(f"{err} — written: {', '.join(map(str, err.written)) or 'nothing'}", "error")
            return self.last_export
        self.last_export = paths
        self._say("exported: " + ", ".join(str(p) for p in paths))
        return paths


def explore(runs, *, metric: str | None = None, arch: str = ALL, depth: int | None = None,
            step: int | None = None, sort: bool = False, export_folder: str | os.PathLike = "figures") -> Dashboard:
    """A dashboard over a run folder, a glob of them, a RunSet, or frames (stats, or (stats, metrics)).

    Problems (no runs, failed runs, a missing metric) are shown in `dashboard.message`, not raised.
    """
    return Dashboard(runs, metric=metric, arch=arch, depth=depth, step=step, sort=sort, export_folder=export_folder)
