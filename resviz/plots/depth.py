"""Figures against depth: a metric along the layers of each run (He et al. Fig. 7, gradient flow, branch vs skip,
signal propagation, per-channel std) and the layer × step heatmap of one run.

`profile_traces` / `profile_axes` say how per-run profiles already selected are drawn, as plain keywords: the
dashboard moves them into its FigureWidget, `profile_figure` makes a figure of them, and `plot_profile` and the
named figures select the profiles from the stats table first.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from resviz.plots import words
from resviz.plots.selection import (
    Profile,
    by_run,
    check_filters,
    describe_filter,
    metric_rows,
    metrics_present,
    pick_step,
    profiles,
    runs_of,
    sorted_view,
    split_parts,
)
from resviz.plots.style import (
    DASHES,
    HEATMAP_HALF_SPAN,
    HEIGHT,
    STEP_AXIS,
    WIDGET_HOVER,
    axis_title,
    base_layout,
    customdata,
    hover,
    index_axis,
    is_log,
    step_text,
    value_axis,
    widened,
)
from resviz.schema import METRIC_TABLE


def profile_traces(profs: list[Profile], metric: str, *, sort: bool = False, widget_hover: bool = False) -> list[dict]:
    """The traces of a depth-profile figure as `go.Scatter` keywords, one per profile (colour = run, dash = part);
    `sort=True` draws values in descending order (Fig. 7, bottom).

    `widget_hover=True` puts the layer names in `text` and layer_index in `customdata` (see style.WIDGET_HOVER),
    the form a FigureWidget sends fastest, and keeps the step out of the trace names (the dashboard's title names
    it). Plain dicts, so the dashboard moves them into its FigureWidget without building a figure first.
    """
    multi = len({p.step for p in profs}) > 1 and not widget_hover
    out = []
    for p in profs:
        if sort:
            x, y, li, names = sorted_view(p)
        else:
            x, y, li, names = p.layer_index, p.value, p.layer_index, p.layer
        if widget_hover:
            where = dict(customdata=li, text=names, meta=metric, hovertemplate=WIDGET_HOVER)
        else:
            where = dict(customdata=customdata(names, li, p.step), hovertemplate=hover(metric))
        out.append(dict(
            x=x, y=y, mode="lines+markers", marker=dict(size=5, symbol=p.run.symbol),
            line=dict(color=p.run.color, width=2, dash=DASHES[p.part_no % len(DASHES)]),
            name=p.name + (f" @ {p.step}" if multi else ""), legendgroup=p.run.label, **where,
        ))
    return out


def profile_facts(profs: list[Profile], metric: str) -> words.Facts:
    """The model facts of the runs drawn (`words.run_facts`), the add names from the block-level layers drawn."""
    level = METRIC_TABLE[metric].level if metric in METRIC_TABLE else ""
    layers = [name for p in profs for name in p.layer] if level == "block" else ()
    return words.run_facts({p.run.key: p.run for p in profs}.values(), layers)


def profile_axes(profs: list[Profile], metric: str, *, sort: bool = False, log_y: bool | None = None,
                 step: int | None = None, title: str | None = None) -> dict:
    """The title, axes and reference line of a depth-profile figure as layout keywords, in the words of
    `resviz.plots.words`. `step` is the step asked for (it words the default title); `log_y` defaults to the
    metric table's log scale."""
    log_y = is_log(metric) if log_y is None else log_y
    f = profile_facts(profs, metric)
    when = step_text([p.step for p in profs], step)
    when = "" if when == "step 0" else when  # a net at initialisation or a pretrained checkpoint: no step
    text = title or " — ".join(t for t in (words.title(metric, f), ("sorted, " if sort else "") + when) if t.strip())
    text = text.rstrip(", ")
    xt = f"rank along depth, sorted by value (1 = largest {words.depth_unit(metric)})" if sort else \
        words.depth_title(metric, f)
    n = max((len(p.value) if sort else int(p.layer_index.max(initial=0))) for p in profs) if profs else 0
    ref = words.reference(metric)
    yaxis = value_axis([p.value for p in profs] if profs else [], log_y, ref[0] if ref else None)
    return dict(title=dict(text=text), xaxis=dict(title=dict(text=xt), **index_axis(n)),
                yaxis=dict(title=dict(text=axis_title(metric)), **yaxis), shapes=words.reference_shape(metric))


def _rows_of(profs: list[Profile]) -> pd.DataFrame:
    """The values drawn, as rows (run_id = the run's label, layer, step, value), for `words.oddities`."""
    return pd.DataFrame({
        "run_id": np.concatenate([np.full(len(p.value), p.run.label, dtype=object) for p in profs] or [[]]),
        "layer": np.concatenate([p.layer.astype(object) for p in profs] or [[]]),
        "step": np.concatenate([np.full(len(p.value), p.step) for p in profs] or [[]]),
        "value": np.concatenate([p.value for p in profs] or [[]]).astype(np.float64),
    })


def profile_caption(profs: list[Profile], metric: str, extra: tuple[str, ...] = (), notes: tuple[str, ...] = ()) -> str:
    """The caption of a depth-profile figure (`words.caption` of the values drawn)."""
    return words.caption(metric, _rows_of(profs), profile_facts(profs, metric), steps=[p.step for p in profs],
                         reference_drawn=words.reference(metric) is not None, extra=extra, notes=notes)


def profile_figure(
    profs: list[Profile], metric: str, *, sort: bool = False, log_y: bool | None = None, step: int | None = None,
    title: str | None = None, extra: tuple[str, ...] = (),
) -> go.Figure:
    """Depth profiles already selected (`selection.profiles`) as a figure: `profile_traces` on `profile_axes`,
    with `profile_caption` (plus the `extra` lines) under it."""
    fig = go.Figure([go.Scatter(**t) for t in profile_traces(profs, metric, sort=sort)])
    fig = base_layout(fig, "")
    fig.update_layout(profile_axes(profs, metric, sort=sort, log_y=log_y, step=step, title=title))
    return words.add_caption(fig, profile_caption(profs, metric, extra))


def plot_profile(
    stats: pd.DataFrame, metric: str, *, step: int | None = None, sort: bool = False, log_y: bool | None = None,
    runs=None, arch=None, depth=None, title: str | None = None, extra: tuple[str, ...] = (),
) -> go.Figure:
    """Any metric against depth, one trace per run; `sort=True` draws values in descending order (Fig. 7, bottom)."""
    profs = profiles(stats, metric, step=step, runs=runs, arch=arch, depth=depth)
    return profile_figure(profs, metric, sort=sort, log_y=log_y, step=step, title=title, extra=extra)


def fig7_metric(stats: pd.DataFrame, metric: str | None) -> tuple[str, str]:
    """(metric drawn, note): `response_std_eval` (eval mode, held out) when the table has it, else `response_std`
    with a note saying so."""
    if metric is not None:
        return metric, ""
    present = set(pd.unique(stats["metric"].astype(str))) if "metric" in stats.columns else set()
    if "response_std_eval" in present:
        return "response_std_eval", ""
    return "response_std", "These runs have no eval-mode rows (response_std_eval): train mode is drawn."


def plot_response_std(stats: pd.DataFrame, *, step: int | None = None, sort: bool = False,
                      metric: str | None = None, prediction: dict[str, pd.DataFrame] | None = None,
                      data: str | None = None, **filters) -> go.Figure:
    """The std of every norm layer's output against its index along depth (or sorted), one trace per run: He et
    al. Fig. 7 for BatchNorm CIFAR nets.

    Draws `response_std_eval` (eval mode, held-out test images) when recorded, else the train-mode
    `response_std`; the caption (`words.caption`) says which, over which seeds, and what the dotted reference
    line is where the metric has one. `prediction`: {run label as in the legend: the frame of
    `resviz.analysis.bn_check.predicted_response_std(model)`} overlays sqrt(mean γ² + var β) per BN layer, dashed
    in the run's colour: what a BN output's std equals exactly in train mode, from the weights alone.
    `data`: how and on which images the table was measured, in words (e.g. `bn_check.measurement_text(...)` for
    `bn_check.measure` tables); the caption says it in place of the recorded metric's default mode."""
    metric, note = fig7_metric(stats, metric)
    check_filters(filters)
    extra = tuple(t for t in (f"Data: {data}." if data else "", note,
                              "Dashed: the γ/β prediction sqrt(mean γ² + var β) from the weights."
                              if prediction else "") if t)
    fig = plot_profile(stats, metric, step=step, sort=sort, log_y=False, extra=extra, **filters)
    if prediction:
        _overlay_prediction(fig, prediction, sort)
    return fig


def _overlay_prediction(fig: go.Figure, prediction: dict[str, pd.DataFrame], sort: bool) -> None:
    """Dashed traces of the γ/β prediction per run, coloured like the run's measured trace (grey if none)."""
    colours = {t.name: (t.line.color if t.line and t.line.color else None) for t in fig.data}
    for label, frame in prediction.items():
        missing = {"layer", "layer_index", "predicted"} - set(frame.columns)
        if missing:
            raise ValueError(f"prediction for {label!r} lacks column(s) {sorted(missing)}: pass the frame "
                             "resviz.analysis.bn_check.predicted_response_std(model) returns")
        frame = frame.sort_values("predicted", ascending=False) if sort else frame.sort_values("layer_index")
        x = list(range(len(frame))) if sort else frame["layer_index"].tolist()
        fig.add_scatter(x=x, y=frame["predicted"].tolist(), mode="lines", name=f"{label} γ/β prediction",
                        line=dict(dash="dash", width=1.5, color=colours.get(label) or "#888"),
                        customdata=frame["layer"].tolist(),
                        hovertemplate="%{customdata}<br>sqrt(mean γ² + var β) = %{y:.5g}<extra></extra>")


def plot_gradient_flow(stats: pd.DataFrame, metric: str = "grad_norm", *, step: int | None = None, **filters) -> go.Figure:
    """`grad_norm` (per parameter) or `act_grad_norm` (per block output) against depth, log scale; the caption
    says that a parameter's gradient is the loss's alone (the Recorder reads it before SGD adds weight decay)."""
    if metric not in ("grad_norm", "act_grad_norm"):
        raise ValueError(f"metric={metric!r} is not a gradient metric; use 'grad_norm' or 'act_grad_norm'")
    fig = plot_profile(stats, metric, step=step, log_y=True, **filters)
    text = GRADIENT_CAPTIONS[metric]
    fig.add_annotation(text=text, xref="paper", yref="paper", x=0, y=-0.2, xanchor="left", yanchor="top",
                       showarrow=False, font=dict(size=11, color="#555"), align="left")
    return fig.update_layout(margin=dict(b=110))


GRADIENT_CAPTIONS = {
    "grad_norm": "‖∂L/∂W‖ of the training loss after backward(), weight decay excluded (SGD adds it inside its "
                 "step, after the recording)",
    "act_grad_norm": "‖∂L/∂x‖ at each block's output on the training batch (the loss is a mean: scales with "
                     "1/batch size)",
}


def _paired(stats, metrics, panels, step, filters, title, log_rows) -> go.Figure:
    """One row per entry of `panels` ((subtitle, y title, [(metric, dash), ...])), one colour per run."""
    found = {}
    for m in metrics:
        try:
            found[m] = profiles(stats, m, step=step, **filters)
        except ValueError:
            continue
    if not found:
        raise ValueError(f"no rows for any of {list(metrics)}{describe_filter(**filters)}; "
                         f"metrics present: {metrics_present(stats)}")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[t for t, _, _ in panels])
    chosen = []
    in_legend: set[str] = set()
    for row, (_, ytitle, members) in enumerate(panels, start=1):
        for metric, dash in members:
            for p in found.get(metric, []):
                chosen.append(p.step)
                fig.add_trace(go.Scatter(
                    x=p.layer_index, y=p.value, mode="lines+markers", marker=dict(size=4, symbol=p.run.symbol),
                    line=dict(color=p.run.color, dash=dash if p.part_no == 0 else DASHES[p.part_no % len(DASHES)],
                              width=2),
                    name=p.name, legendgroup=p.run.label, showlegend=p.name not in in_legend,
                    customdata=customdata(p.layer, p.layer_index, p.step), hovertemplate=hover(metric),
                ), row=row, col=1)
                in_legend.add(p.name)
        values = [p.value for m, _ in members for p in found.get(m, [])]
        fig.update_yaxes(title_text=ytitle, row=row, col=1, **value_axis(values, row in log_rows))
    when = step_text(chosen, step)
    fig = base_layout(fig, title + ("" if when == "step 0" else f" — {when}"))
    top = max((int(p.layer_index.max(initial=0)) for ps in found.values() for p in ps), default=0)
    fig.update_xaxes(**index_axis(top))
    first = next(iter(found))
    fig.update_xaxes(title_text=words.depth_title(first, profile_facts(found[first], first)), row=len(panels), col=1)
    fig.update_layout(height=HEIGHT + 150)
    return words.add_caption(fig, _paired_caption(found))


def _paired_caption(found: dict[str, list[Profile]]) -> str:
    """One caption for the metrics of a paired figure: the first one's, with every metric's oddities."""
    first, *others = found
    notes = tuple(line for m in others for line in words.oddities(m, _rows_of(found[m]), profile_facts(found[m], m)))
    return profile_caption(found[first], first, notes=notes)


def plot_branch_skip(stats: pd.DataFrame, *, step: int | None = None, **filters) -> go.Figure:
    """Per block: branch std (solid) and skip std (dotted) on top, branch/skip ratio (log) below."""
    panels = [
        ("branch std (solid) and skip std (dotted)", "std (a.u.)", [("branch_std", "solid"), ("skip_std", "dot")]),
        ("branch-to-skip ratio", axis_title("branch_ratio"), [("branch_ratio", "solid")]),
    ]
    return _paired(stats, ("branch_std", "skip_std", "branch_ratio"), panels, step,
                   check_filters(filters), "Residual branch vs skip path", {2})


def plot_signal_propagation(stats: pd.DataFrame, *, step: int | None = None, **filters) -> go.Figure:
    """Signal propagation plot (Brock et al. 2021): squared channel mean and channel variance per block, log."""
    panels = [
        ("squared channel mean", axis_title("channel_sq_mean"), [("channel_sq_mean", "solid")]),
        ("channel variance", axis_title("channel_var"), [("channel_var", "solid")]),
    ]
    return _paired(stats, ("channel_sq_mean", "channel_var"), panels, step, check_filters(filters),
                   "Signal propagation", {1, 2})


# ---- heatmap: layer × step of one run -----------------------------------------------------------------------
def _one_run(rows: pd.DataFrame, metric: str, run: str | None) -> tuple[pd.DataFrame, str]:
    """The rows of `run` (the only run when None); ValueError naming the runs to choose from."""
    ids = sorted(map(str, pd.unique(rows["run_id"].astype(str)))) if "run_id" in rows.columns else [""]
    if run is None:
        if len(ids) > 1:
            raise ValueError(f"{len(ids)} runs have {metric!r} rows; choose one with run=, one of {ids}")
        run = ids[0]
    rows = rows[(rows["run_id"].astype(str) == run).to_numpy()] if "run_id" in rows.columns else rows
    if rows.empty:
        raise ValueError(f"run={run!r} has no {metric!r} rows; runs with it: {ids}")
    return rows, run


def _layer_step_grid(rows: pd.DataFrame, metric: str, part: str | None):
    """(steps, z (layers, S), layer_index, layer, stage, block, part) of one part of one run's rows."""
    steps, s_inv = np.unique(rows["step"].to_numpy(), return_inverse=True)
    codes, uniq = pd.factorize(rows["layer"].astype(str))
    n_names = len(uniq) + 1
    cols, c_inv = np.unique(rows["layer_index"].to_numpy(np.int64) * n_names + codes, return_inverse=True)
    z = np.full((len(cols), len(steps)), np.nan)  # (rows = (layer_index, layer) pairs, S)
    z[c_inv, s_inv] = rows["value"].to_numpy(np.float64)
    stage, block = np.full(len(cols), -1), np.full(len(cols), -1)
    if "stage" in rows.columns:
        stage[c_inv] = rows["stage"].to_numpy()
    if "block" in rows.columns:
        block[c_inv] = rows["block"].to_numpy()
    parts = split_parts(cols // n_names, np.asarray(uniq, dtype=object)[cols % n_names])
    labels = [label for label, _ in parts]
    if part is None:
        part = labels[0]
    if part not in labels:
        raise ValueError(f"part={part!r} is not a part of {metric!r}; choose one of {labels}")
    keep = parts[labels.index(part)][1]
    cols = cols[keep]
    names = np.asarray(uniq, dtype=object)[cols % n_names]
    return steps, z[keep], cols // n_names, names, stage[keep], block[keep], part


def _stage_ticks(fig: go.Figure, idx: np.ndarray, stage: np.ndarray, block: np.ndarray) -> None:
    """y ticks that mark the stages (stem, stage k, head) rather than every layer, white lines between them."""
    starts = [i for i in range(len(idx)) if i == 0 or stage[i] != stage[i - 1]]
    ends = starts[1:] + [len(idx)]

    def tick(a: int, b: int) -> str:
        if stage[a] < 0:
            return f"{idx[a]}–{idx[b - 1]}"
        if stage[a] == 0:
            return "stem"
        return "head" if block[a] < 0 else f"stage {stage[a]}"

    fig.update_yaxes(tickvals=[(idx[a] + idx[b - 1]) / 2 for a, b in zip(starts, ends)],
                     ticktext=[tick(a, b) for a, b in zip(starts, ends)])
    for a in starts[1:]:
        fig.add_hline(y=idx[a] - 0.5, line=dict(color="white", width=1))


def plot_heatmap(
    stats: pd.DataFrame, metric: str, *, run: str | None = None, log_z: bool | None = None, step: int | None = None,
    part: str | None = None, zrange: tuple[float, float] | None = None,
) -> go.Figure:
    """The whole training at a glance: layer (y) × step (x) heatmap of one run's `metric`.

    Readable at any depth: y ticks mark the stages rather than every layer; hover names the layer.
    `step` draws a vertical line at that step. A metric with several rows per layer index (channel_var:
    block output and branch) shows one `part` (default: the first; see `split_parts`). `zrange` (in the
    metric's units) fixes the colour scale, so heatmaps of runs that are compared share one labelled scale
    (`heatmap_range`).
    """
    rows, run = _one_run(metric_rows(stats, metric), metric, run)
    (info,) = runs_of(rows)[:1]
    steps, z, idx, names, stage, block, part = _layer_step_grid(rows, metric, part)
    log_z = is_log(metric) if log_z is None else log_z
    shown = np.log10(np.where(z > 0, z, np.nan)) if log_z else z
    colorbar = dict(title=dict(text=axis_title(metric).split(" (")[0] + (" (log)" if log_z else "")))
    zmin = zmax = None
    if zrange is not None:
        zmin, zmax = (math.log10(v) for v in zrange) if log_z else zrange
    elif not log_z and np.isfinite(shown).any():  # this run's range, never zoomed into noise (style.widened)
        zmin, zmax = widened(float(np.nanmin(shown)), float(np.nanmax(shown)), HEATMAP_HALF_SPAN)
    if log_z and np.isfinite(shown).any():
        lo = math.floor(zmin if zmin is not None else np.nanmin(shown))
        hi = math.ceil(zmax if zmax is not None else np.nanmax(shown))
        ticks = list(range(lo, hi + 1))
        colorbar.update(tickvals=ticks, ticktext=[f"10<sup>{t}</sup>" for t in ticks])
    fig = go.Figure(go.Heatmap(
        x=steps, y=idx, z=shown, customdata=np.broadcast_to(names[:, None], z.shape),
        colorscale="Viridis", colorbar=colorbar, zmin=zmin, zmax=zmax,
        hovertemplate=f"<b>%{{customdata}}</b><br>index %{{y}} · step %{{x}}<br>{metric} = %{{text}}<extra></extra>",
        text=np.vectorize(lambda v: f"{v:.4g}")(z),
    ))
    _stage_ticks(fig, idx, stage, block)
    if step is not None:
        fig.add_vline(x=pick_step(steps, step), line=dict(color="white", dash="dash", width=1))
    f = words.run_facts([info], names if METRIC_TABLE.get(metric) and METRIC_TABLE[metric].level == "block" else ())
    title = f"{words.title(metric, f)} over training — {info.label}" + (f" ({part})" if part else "")
    fig = base_layout(fig, title, STEP_AXIS, words.depth_title(metric, f), False)
    fig.update_layout(height=HEIGHT + 100, legend=dict(title=None))
    scale = "colour scale: the range given (shared by the runs compared)" if zrange is not None else \
        "colour scale: this run's own range" + (", log" if log_z else "")
    text = words.caption(metric, rows, f, steps=steps, extra=(f"{scale[0].upper()}{scale[1:]}.",), literature=False)
    return words.add_caption(fig, text)


def heatmap_range(stats: pd.DataFrame, metric: str) -> tuple[float, float]:
    """(min, max) of a metric's finite (positive, for a log metric) values over every run: one colour scale for
    the heatmaps that are compared."""
    v = metric_rows(stats, metric)["value"].to_numpy(np.float64)
    v = v[np.isfinite(v) & ((v > 0) if is_log(metric) else True)]
    if not len(v):
        raise ValueError(f"no finite {metric!r} values to scale a heatmap by")
    return (float(v.min()), float(v.max())) if is_log(metric) else widened(float(v.min()), float(v.max()))


def plot_channel_std(stats: pd.DataFrame, *, step: int | None = None, runs=None, arch=None,
                     depth=None) -> go.Figure:
    """Per-channel response std (dots, one per channel) of every norm layer against layer index, with the
    pooled response_std (line) where recorded; runs side by side (small x offsets). Needs the rows of
    `Recorder(..., per_channel=True)`."""
    rows = metric_rows(stats, "response_channel_std", runs=runs, arch=arch, depth=depth)
    pooled = {}
    try:
        pooled = {(p.run.key): p for p in profiles(stats, "response_std", step=step, runs=runs, arch=arch,
                                                   depth=depth)}
    except ValueError:
        pass
    groups = by_run(rows)
    fig = go.Figure()
    chosen = []
    width = 0.5 / max(len(groups), 1)
    for k, (run, g) in enumerate(groups):
        s = pick_step(np.unique(g["step"].to_numpy()), step)
        chosen.append(s)
        at = g[(g["step"] == s).to_numpy()].sort_values(["layer_index", "channel"], kind="stable")
        shift = (k - (len(groups) - 1) / 2) * width
        li, names = at["layer_index"].to_numpy(np.int64), at["layer"].astype(str).to_numpy()
        cd = np.empty((len(at), 3), dtype=object)  # (rows, 3): layer, index, channel
        cd[:, 0], cd[:, 1], cd[:, 2] = names, li, at["channel"].to_numpy()
        fig.add_trace(go.Scatter(
            x=li + shift, y=at["value"].to_numpy(np.float64), mode="markers", name=f"{run.label} channels",
            legendgroup=run.label, marker=dict(color=run.color, size=4, opacity=0.45), customdata=cd,
            hovertemplate=("<b>%{customdata[0]}</b> channel %{customdata[2]}<br>index %{customdata[1]}<br>"
                           "std = %{y:.4g}<extra>%{fullData.name}</extra>"),
        ))
        p = pooled.get(run.key)
        if p is not None:
            fig.add_trace(go.Scatter(
                x=p.layer_index + shift, y=p.value, mode="lines", name=f"{run.label} pooled", legendgroup=run.label,
                line=dict(color=run.color, width=2), customdata=customdata(p.layer, p.layer_index, p.step),
                hovertemplate=hover("response_std"),
            ))
    title = f"Per-channel response std (dots) and pooled std (line) — {step_text(chosen, step)}"
    f = words.run_facts([run for run, _ in groups])
    return base_layout(fig, title, words.depth_title("response_std", f), axis_title("response_channel_std"), False)
