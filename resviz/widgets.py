"""`explore(runs)`: a dashboard of one metric against depth, with sliders for depth and training step.

The stats table is pivoted once per load into per-(run, metric) arrays of shape (steps, layers); a slider
move only picks a row and swaps the arrays of the traces of one `go.FigureWidget` inside `batch_update()`.
Every error ends up in `dashboard.message`, never as a traceback in the notebook.
"""
from __future__ import annotations

import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from resviz import plots
from resviz.schema import METRICS

ALL = "all"
CONTINUOUS_MAX_POINTS = 1_000  # sliders redraw while dragging only when a view has fewer points than this
# Hover names the layer: text = layer name, customdata = layer_index (numbers travel as binary buffers).
_HOVER = "<b>%{text}</b><br>index %{customdata}<br>%{meta} = %{y:.4g}<extra>%{fullData.name}</extra>"


@dataclass(frozen=True)
class Series:
    """One run's values of one metric: every recorded step × every layer (in layer_index order)."""

    run: plots.Run
    metric: str
    steps: np.ndarray  # (S,) int, sorted
    layer_index: np.ndarray  # (L,) int
    layer: np.ndarray  # (L,) str
    values: np.ndarray  # (S, L) float, NaN where a layer was not recorded at a step
    part: str = ""  # see plots.split_parts: "" unless the metric has several rows per layer index
    part_no: int = 0

    @property
    def name(self) -> str:
        return self.run.label + (f" · {self.part}" if self.part else "")

    def row(self, step: int) -> int:
        """Row of the last recorded step at or before `step` (the first row if none)."""
        return max(int(np.searchsorted(self.steps, step, side="right")) - 1, 0)


def pivot(stats: pd.DataFrame) -> dict[str, list[Series]]:
    """metric -> per-run Series, in plots.runs_of order: one sort of the whole table, then numpy slices."""
    if stats is None or len(stats) == 0:
        return {}
    missing = [c for c in ("metric", "value", "step", "layer", "layer_index") if c not in stats.columns]
    if missing:
        raise ValueError(f"stats table is missing column(s) {missing}; pass the tidy table from runs.load or Recorder.frame()")
    if "channel" in stats.columns:
        stats = stats[(stats["channel"] == -1).to_numpy()]
    meta_cols = [c for c in plots.RUN_COLUMNS if c in stats.columns]
    run_code = stats.groupby(meta_cols, observed=True, sort=False).ngroup().to_numpy()  # (N,)
    first_rows = np.unique(run_code, return_index=True)[1]
    runs = plots.runs_of(stats.iloc[first_rows])
    meta = plots._meta(stats.iloc[first_rows])  # row r describes run code r
    by_key = {r.key: r for r in runs}
    run_of = [by_key[(m.run_id, m.arch, int(m.depth), m.norm, m.shortcut, int(m.seed))] for m in meta.itertuples()]
    metric_code, metric_names = pd.factorize(stats["metric"])
    layer_code, layer_names = pd.factorize(stats["layer"])
    layer_names = np.asarray(layer_names.astype(str), dtype=object)
    step = stats["step"].to_numpy(np.int64)
    li = stats["layer_index"].to_numpy(np.int64)
    value = stats["value"].to_numpy(np.float64)
    n_names = len(layer_names) + 1
    group = run_code.astype(np.int64) * len(metric_names) + metric_code  # (N,) one code per (run, metric)
    order = np.lexsort((li, step, group))
    g_sorted = group[order]
    bounds = np.r_[0, np.flatnonzero(np.diff(g_sorted)) + 1, len(order)]
    out: dict[str, list[Series]] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = order[a:b]
        g = int(g_sorted[a])
        run, metric = run_of[g // len(metric_names)], str(metric_names[g % len(metric_names)])
        steps, s_inv = np.unique(step[idx], return_inverse=True)
        cols, c_inv = np.unique(li[idx] * n_names + layer_code[idx], return_inverse=True)  # by index, then name
        values = np.full((len(steps), len(cols)), np.nan)  # (S, L)
        values[s_inv, c_inv] = value[idx]
        li_cols, names = cols // n_names, layer_names[cols % n_names]
        for k, (part, pos) in enumerate(plots.split_parts(li_cols, names)):
            out.setdefault(metric, []).append(
                Series(run, metric, steps, li_cols[pos], names[pos], values[:, pos], part, k))
    rank = {r.key: i for i, r in enumerate(runs)}
    for series in out.values():
        series.sort(key=lambda s: (rank[s.run.key], s.part_no))
    return out


def load_source(source) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """(stats, training metrics or None, status or None) from a run folder / glob, a RunSet, or frames."""
    if isinstance(source, (str, os.PathLike)):
        from resviz import runs  # lazy: run folders are only needed for this kind of source

        source = runs.load(source)
    if isinstance(source, pd.DataFrame):
        return source, None, None
    if isinstance(source, (tuple, list)) and source and all(isinstance(f, pd.DataFrame) for f in source):
        return source[0], (source[1] if len(source) > 1 else None), None
    if hasattr(source, "stats"):
        return source.stats, getattr(source, "metrics", None), getattr(source, "status", None)
    raise TypeError(
        f"explore() got {type(source).__name__}; pass a run folder, a glob, a RunSet, a stats DataFrame "
        "or a (stats, metrics) pair"
    )


def _status_summary(status: pd.DataFrame | None) -> str:
    if status is None or len(status) == 0 or "status" not in status.columns:
        return ""
    counts = status["status"].astype(str).value_counts()
    text = ", ".join(f"{n} {s}" for s, n in counts.items())
    reasons = status.get("reason")
    bad = status[status["status"].astype(str).isin(["failed", "diverged", "interrupted"])]
    if reasons is not None and len(bad):
        first = bad["reason"].astype(str).iloc[0]
        if first and first != "nan":
            text += f" (e.g. {bad['run_id'].astype(str).iloc[0]}: {first})"
    return f"{len(status)} run(s): {text}"


class Dashboard:
    """Depth and step sliders, metric / architecture dropdowns, a sort toggle, refresh and export, one figure.

    Controls are attributes (set `.value` from Python to drive it); display the object in a notebook.
    """

    def __init__(self, source, *, metric: str = "response_std", arch: str = ALL, depth: int | None = None,
                 step: int | None = None, sort: bool = False, export_folder: str | os.PathLike = "figures"):
        self._source = source
        self._wanted = dict(metric=metric, arch=arch, depth=depth, step=step)
        self._data: dict[str, list[Series]] = {}
        self._group: list[Series] = []
        self._busy = False
        self.last_export: list[Path] = []

        self.figure = go.FigureWidget(layout=go.Layout(
            template="plotly_white", height=500, hovermode="closest", legend=dict(title=dict(text="run")),
            margin=dict(t=70, b=60), title=dict(text="")))
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

    # ---- display ------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

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
            self._data, self._group = {}, []
            self._redraw()
            if status is not None and len(status) == 0:
                raise FileNotFoundError(
                    f"no run folders found in {self._source}: a run folder holds config.json "
                    "(resviz train writes one); start a run and press refresh"
                )
            summary = _status_summary(status)
            raise ValueError(
                "no per-layer statistics to show" + (f"; {summary}" if summary else "")
                + "; record some with resviz train (or a Recorder) and press refresh"
            )
        self._data = data
        metrics = [m for m in METRICS if m in self._data] + sorted(set(self._data) - set(METRICS))
        note = ""
        if keep["metric"] not in self._data:
            note = f"no {keep['metric']!r} rows; showing {metrics[0]!r} (metrics present: {metrics})"
            keep["metric"] = metrics[0]
        self._busy = True
        try:
            self.metric_dropdown.options = [(m, m) for m in metrics]
            self.metric_dropdown.value = keep["metric"]
            self._set_options(keep)
        finally:
            self._busy = False
        self._redraw()
        summary = _status_summary(status)
        if note or summary:
            self._say("; ".join(t for t in (note, summary) if t))

    def _set_options(self, keep: dict) -> None:
        """Arch, depth and step options for the chosen metric, keeping the current choices where possible."""
        series = self._data[self.metric_dropdown.value]
        archs = sorted({s.run.arch for s in series}, key=lambda a: {"plain": 0, "resnet": 1}.get(a, 2))
        self.arch_dropdown.options = [(ALL, ALL)] + [(plots.arch_name(a), a) for a in archs]
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
        step = plots.pick_step(steps, keep["step"])
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
        self._busy = True
        try:
            self._set_options(keep)
        finally:
            self._busy = False
        self._redraw()

    def _on_view(self, change) -> None:
        if self._group:
            self._redraw()

    # ---- drawing ------------------------------------------------------------------------------------
    def title(self) -> str:
        metric, step = self.metric_dropdown.value, self.step_slider.value
        arch = self.arch_dropdown.value
        archs = dict.fromkeys(plots.arch_name(s.run.arch) for s in self._group)  # plain first
        what = " and ".join(archs) if arch == ALL else plots.arch_name(arch)
        sort = " (sorted)" if self.sort_toggle.value else ""
        return f"{plots.SHORT_TITLES.get(metric, metric)}{sort} — depth {self.depth_slider.value}, {what}, step {step}"

    def _redraw(self) -> None:
        """Swap the traces' arrays for the current (depth, arch, metric) group, step and sort order."""
        if not self._group:
            with self.figure.batch_update():
                for trace in self.figure.data:
                    trace.update(x=[], y=[], visible=False)
                self.figure.layout.title.text = "no data"
            for w in (self.depth_slider, self.step_slider):
                w.disabled = True
            return
        metric, step, sort = self.metric_dropdown.value, self.step_slider.value, self.sort_toggle.value
        fig, group = self.figure, self._group
        if len(fig.data) < len(group):
            fig.add_traces([go.Scatter(mode="lines+markers", marker=dict(size=4), hovertemplate=_HOVER)
                            for _ in range(len(group) - len(fig.data))])
        with fig.batch_update():
            for trace, s in zip(fig.data, group):
                y = s.values[s.row(step)]  # (L,)
                if sort:
                    order = np.argsort(np.where(np.isnan(y), np.inf, -y), kind="stable")
                    x, y, index, names = np.arange(1, len(y) + 1), y[order], s.layer_index[order], s.layer[order]
                else:
                    x, index, names = s.layer_index, s.layer_index, s.layer
                dash = plots.DASHES[s.part_no % len(plots.DASHES)]
                trace.update(x=x, y=y, customdata=index, text=names, name=s.name,
                             line=dict(color=s.run.color, width=2, dash=dash),
                             meta=metric, visible=True, hovertemplate=_HOVER)
            for trace in fig.data[len(group):]:
                trace.update(x=[], y=[], visible=False)
            fig.layout.title.text = self.title()
            fig.layout.xaxis.title.text = f"rank (sorted by {metric}, descending)" if sort else plots.x_title(metric)
            fig.layout.yaxis.title.text = plots.AXIS_TITLES.get(metric, metric)
            fig.layout.yaxis.type = "log" if metric in plots.LOG_METRICS else "linear"

    # ---- export -------------------------------------------------------------------------------------
    def export(self, folder: str | os.PathLike | None = None, formats=None) -> list[Path]:
        """Write the current figure to the chosen folder and formats; the paths are shown in `message`."""
        from resviz import export as export_mod

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


def explore(runs, *, metric: str = "response_std", arch: str = ALL, depth: int | None = None,
            step: int | None = None, sort: bool = False, export_folder: str | os.PathLike = "figures") -> Dashboard:
    """A dashboard over a run folder, a glob of them, a RunSet, or frames (stats, or (stats, metrics)).

    Problems (no runs, failed runs, a missing metric) are shown in `dashboard.message`, not raised.
    """
    return Dashboard(runs, metric=metric, arch=arch, depth=depth, step=step, sort=sort, export_folder=export_folder)
