"""Figures from the tidy tables: pure functions `(frame, **options) -> go.Figure`; no I/O, no display.

Every figure colours a run the same way (`run_color`: plain nets warm, ResNets cool, darker when deeper),
names the layer in its hover text, and picks a training step (default: each run's last). A selection
with no rows raises ValueError naming what is present, which the dashboard shows as its message.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

RUN_COLUMNS = ("run_id", "arch", "depth", "norm", "shortcut", "seed")

# y-axis titles, with units ("a.u." = the activations' own units: inputs are normalised images).
AXIS_TITLES: dict[str, str] = {
    "response_std": "response std (a.u.)",
    "branch_std": "branch std (a.u.)",
    "skip_std": "skip std (a.u.)",
    "sum_std": "branch + skip std (a.u.)",
    "branch_ratio": "‖F(x)‖ / ‖skip‖ (ratio)",
    "grad_norm": "‖∂L/∂W‖₂ (loss per weight unit)",
    "act_grad_norm": "‖∂L/∂x‖₂ at block output (loss per a.u.)",
    "channel_sq_mean": "mean over channels of (channel mean)² (a.u.²)",
    "channel_var": "mean channel variance (a.u.²)",
    "branch_scale": "branch scale α (ratio)",
    "response_channel_std": "per-channel response std (a.u.)",
}
TITLES: dict[str, str] = {
    "response_std": "Response std of each 3×3 layer (after norm, before ReLU/addition)",
    "branch_std": "Residual branch std per block",
    "skip_std": "Skip path std per block",
    "sum_std": "Std of branch + skip per block",
    "branch_ratio": "Branch-to-skip ratio per block",
    "grad_norm": "Gradient norm per parameter",
    "act_grad_norm": "Gradient norm w.r.t. each block's output",
    "channel_sq_mean": "Squared channel mean per block (signal propagation)",
    "channel_var": "Channel variance per block (signal propagation)",
    "branch_scale": "Branch scale per block",
    "response_channel_std": "Per-channel response std",
}
SHORT_TITLES: dict[str, str] = {
    "response_std": "Response std per 3×3 layer",
    "branch_std": "Branch std per block",
    "skip_std": "Skip std per block",
    "sum_std": "Branch + skip std per block",
    "branch_ratio": "Branch/skip ratio per block",
    "grad_norm": "Gradient norm per parameter",
    "act_grad_norm": "Output-gradient norm per block",
    "channel_sq_mean": "Squared channel mean per block",
    "channel_var": "Channel variance per block",
    "branch_scale": "Branch scale per block",
    "response_channel_std": "Per-channel response std",
}
LOG_METRICS = frozenset({"grad_norm", "act_grad_norm", "branch_ratio", "channel_sq_mean", "channel_var"})
STEP_AXIS = "iteration (optimiser steps)"
FIG7_CAPTION = (
    "Reference, He et al. 2015 Fig. 7: ResNet responses are smaller than plain-net responses, "
    "and smaller the deeper the ResNet."
)
# Depths that get evenly spaced shades; others fall between them on a log scale.
_SHADE_DEPTHS = (8, 14, 20, 32, 44, 56, 110, 1202)
# Hue moves along with lightness so neighbouring depths stay apart: plain light orange -> dark red,
# ResNet teal -> blue -> deep purple.
_SCALES = {
    "plain": ["#fdb863", "#f28e2b", "#e66101", "#d7301f", "#a50f15", "#5c0011"],
    "resnet": ["#66c2a5", "#1f9bb5", "#2166ac", "#3f3f9f", "#6a3d9a", "#2d0a5e"],
}
_OTHER_SCALE = "Purples"
_HEIGHT = 500


def x_title(metric: str) -> str:
    """x-axis title of a depth profile: layers for responses and gradients, blocks for block metrics."""
    if metric in ("response_std", "response_channel_std"):
        return "layer index (0 = stem conv)"
    if metric == "grad_norm":
        return "parameter index along depth (0 = stem)"
    return "block index along depth (0 = first block)"


def arch_name(arch: str) -> str:
    return {"resnet": "ResNet", "plain": "plain"}.get(str(arch), str(arch))


def run_color(arch: str, depth: int, norm: str = "batch", shortcut: str = "A", seed: int = 0) -> str:
    """The colour of a run in every figure: plain warm, ResNet cool, darker when deeper.

    Depends only on the run itself (not on the other runs drawn), so figures agree. Runs that differ
    only in norm, shortcut or seed get a small deterministic shift of shade.
    """
    d = max(int(depth), 1)
    logs = np.log(_SHADE_DEPTHS)
    rank = float(np.interp(math.log(d), logs, np.arange(len(_SHADE_DEPTHS)))) / (len(_SHADE_DEPTHS) - 1)
    shade = rank  # 0 (depth 8) .. 1 (depth 1202)
    default = str(norm) == "batch" and str(shortcut) in ("A", "none") and int(seed) <= 0
    if not default:
        h = hashlib.sha1(f"{norm}|{shortcut}|{seed}".encode()).digest()
        shade += (h[0] / 255 - 0.5) * 0.12
    shade = min(max(shade, 0.0), 1.0)
    scale = _SCALES.get(str(arch))
    if scale is None:
        return sample_colorscale(_OTHER_SCALE, [0.4 + 0.5 * shade])[0]
    return sample_colorscale(scale, [shade])[0]


@dataclass(frozen=True)
class Run:
    """One run as drawn: its metadata, legend label and colour."""

    run_id: str
    arch: str
    depth: int
    norm: str
    shortcut: str
    seed: int
    label: str
    color: str

    @property
    def key(self) -> tuple:
        return (self.run_id, self.arch, self.depth, self.norm, self.shortcut, self.seed)


def _meta(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run, with defaults for metadata columns a frame lacks."""
    cols = [c for c in RUN_COLUMNS if c in frame.columns]
    if "run_id" not in cols and "arch" not in cols:
        raise ValueError(f"table has neither run_id nor arch columns; expected {list(RUN_COLUMNS)}")
    uniq = frame[cols].drop_duplicates().astype({c: object for c in cols if c not in ("depth", "seed")})
    defaults = {"run_id": "", "arch": "unknown", "depth": -1, "norm": "unknown", "shortcut": "unknown", "seed": 0}
    for c in RUN_COLUMNS:
        if c not in uniq.columns:
            uniq[c] = defaults[c]
    uniq = uniq[list(RUN_COLUMNS)].astype({"run_id": str, "arch": str, "norm": str, "shortcut": str})
    return uniq.astype({"depth": np.int64, "seed": np.int64}).reset_index(drop=True)


def run_label(arch: str, depth: int, norm: str = "batch", shortcut: str = "A", seed: int = 0) -> str:
    """Legend label of a run, e.g. "ResNet-56" or "plain-20 (norm=layer, seed=1)"; defaults are left out."""
    base = f"{arch_name(arch)}-{depth}" if int(depth) > 0 else arch_name(arch)
    extra = [f"norm={norm}"] if str(norm) != "batch" else []
    if str(arch) != "plain" and str(shortcut) != "A":
        extra.append(f"shortcut={shortcut}")
    if int(seed) > 0:  # 0 is the default, -1 unknown (an ad-hoc Recorder)
        extra.append(f"seed={seed}")
    return base + (f" ({', '.join(extra)})" if extra else "")


def runs_of(frame: pd.DataFrame) -> list[Run]:
    """The runs in a frame, plain before ResNet then by depth; labels from `run_label` (run_id added on a clash)."""
    meta = _meta(frame)
    meta = meta.assign(_o=meta["arch"].map({"plain": 0, "resnet": 1}).fillna(2))
    meta = meta.sort_values(["_o", "depth", "norm", "shortcut", "seed", "run_id"], kind="stable")
    meta["label"] = [run_label(r.arch, r.depth, r.norm, r.shortcut, r.seed) for r in meta.itertuples(index=False)]
    dup = meta["label"].duplicated(keep=False) & (meta["run_id"] != "")
    meta.loc[dup, "label"] = meta.loc[dup, "label"] + " [" + meta.loc[dup, "run_id"] + "]"
    return [
        Run(r.run_id, r.arch, int(r.depth), r.norm, r.shortcut, int(r.seed), r.label,
            run_color(r.arch, r.depth, r.norm, r.shortcut, r.seed))
        for r in meta.itertuples(index=False)
    ]


def pick_step(steps: np.ndarray, step: int | None) -> int:
    """The recorded step shown for `step`: the last one at or before it (the first if none), or the last."""
    if step is None:
        return int(steps[-1])
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return int(steps[max(i, 0)])


def _filter(frame: pd.DataFrame, runs, arch, depth) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    if runs is not None and "run_id" in frame.columns:
        mask &= frame["run_id"].astype(str).isin([runs] if isinstance(runs, str) else list(runs)).to_numpy()
    if arch is not None and "arch" in frame.columns:
        mask &= frame["arch"].astype(str).isin([arch] if isinstance(arch, str) else list(arch)).to_numpy()
    if depth is not None and "depth" in frame.columns:
        mask &= frame["depth"].isin([depth] if isinstance(depth, (int, np.integer)) else list(depth)).to_numpy()
    return frame[mask]


def _describe_filter(runs, arch, depth) -> str:
    parts = [f"{k}={v!r}" for k, v in (("runs", runs), ("arch", arch), ("depth", depth)) if v is not None]
    return f" with {', '.join(parts)}" if parts else ""


def metric_rows(stats: pd.DataFrame, metric: str, *, runs=None, arch=None, depth=None) -> pd.DataFrame:
    """The pooled rows of one metric for the selected runs; ValueError naming what exists when none."""
    missing = [c for c in ("metric", "value", "step", "layer", "layer_index") if c not in stats.columns]
    if missing:
        raise ValueError(f"stats table is missing column(s) {missing}; pass the tidy table from runs.load or Recorder.frame()")
    rows = stats[(stats["metric"] == metric).to_numpy()]
    if "channel" in rows.columns and metric != "response_channel_std":
        rows = rows[(rows["channel"] == -1).to_numpy()]  # pooled rows only
    rows = _filter(rows, runs, arch, depth)
    if rows.empty:
        present = sorted(map(str, pd.unique(stats["metric"]))) if len(stats) else []
        raise ValueError(
            f"no {metric!r} rows{_describe_filter(runs, arch, depth)}; metrics present: {present or 'none (empty table)'}"
        )
    return rows


@dataclass(frozen=True)
class Profile:
    """One run's values of one metric along depth at one step, in layer_index order.

    `part` names one of several rows a metric has per layer_index (the Recorder's channel_var has the
    block output and the branch at the same index): "" when there is one row per index.
    """

    run: Run
    step: int
    layer_index: np.ndarray  # (L,) int
    layer: np.ndarray  # (L,) str
    value: np.ndarray  # (L,) float
    part: str = ""
    part_no: int = 0

    @property
    def name(self) -> str:
        return self.run.label + (f" · {self.part}" if self.part else "")


DASHES = ("solid", "dash", "dot", "dashdot")


def split_parts(layer_index: np.ndarray, layer: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Positions of each part of a profile sorted by layer_index: the k-th row at an index belongs to part k.

    A part is labelled by the last dotted segment its layers share (e.g. "out" for "layer1.0.probe_out"),
    else "part k". One row per index gives one unnamed part.
    """
    n = len(layer_index)
    if n == 0 or np.all(layer_index[1:] != layer_index[:-1]):
        return [("", np.arange(n))]
    starts = np.r_[True, layer_index[1:] != layer_index[:-1]]  # (n,) first row of each index
    rank = np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    out = []
    for k in range(int(rank.max()) + 1):
        idx = np.flatnonzero(rank == k)
        tails = {str(name).rsplit(".", 1)[-1] for name in layer[idx]}
        out.append((tails.pop().removeprefix("probe_") if len(tails) == 1 else f"part {k + 1}", idx))
    return out


def _by_run(rows: pd.DataFrame) -> list[tuple[Run, pd.DataFrame]]:
    """Split rows by run, in runs_of order."""
    runs = runs_of(rows)
    by_key = {r.key: r for r in runs}
    order = {r.key: i for i, r in enumerate(runs)}
    meta_cols = [c for c in RUN_COLUMNS if c in rows.columns]
    out = []
    for _, g in rows.groupby(meta_cols, observed=True, sort=False):
        m = _meta(g.iloc[:1]).iloc[0]
        key = (m.run_id, m.arch, int(m.depth), m.norm, m.shortcut, int(m.seed))
        out.append((by_key[key], g))
    return sorted(out, key=lambda t: order[t[0].key])


def profiles(stats: pd.DataFrame, metric: str, *, step=None, runs=None, arch=None, depth=None) -> list[Profile]:
    """Per-run depth profiles of `metric` at `step` (default: each run's last recorded step)."""
    rows = metric_rows(stats, metric, runs=runs, arch=arch, depth=depth)
    out = []
    for run, g in _by_run(rows):
        s = pick_step(np.unique(g["step"].to_numpy()), step)
        at = g[(g["step"] == s).to_numpy()].sort_values("layer_index", kind="stable")
        li, names = at["layer_index"].to_numpy(np.int64), at["layer"].astype(str).to_numpy()
        value = at["value"].to_numpy(np.float64)
        for k, (part, idx) in enumerate(split_parts(li, names)):
            out.append(Profile(run, s, li[idx], names[idx], value[idx], part, k))
    return out


def sorted_view(p: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank from 1, values descending, layer_index, layer) of Fig. 7's bottom panel; NaN last."""
    order = np.argsort(np.where(np.isnan(p.value), np.inf, -p.value), kind="stable")
    return np.arange(1, len(order) + 1), p.value[order], p.layer_index[order], p.layer[order]


def hover(metric: str) -> str:
    """Hover template naming the layer; customdata = (layer name, layer index, step)."""
    return (
        "<b>%{customdata[0]}</b><br>index %{customdata[1]} · step %{customdata[2]}<br>"
        f"{metric} = %{{y:.4g}}<extra>%{{fullData.name}}</extra>"
    )


def customdata(layer: np.ndarray, layer_index: np.ndarray, step: int) -> np.ndarray:
    out = np.empty((len(layer), 3), dtype=object)  # (L, 3)
    out[:, 0], out[:, 1], out[:, 2] = layer, layer_index, step
    return out


def _step_text(chosen: list[int], step) -> str:
    if len(set(chosen)) == 1:
        return f"step {chosen[0]}"
    return "each run's last step" if step is None else f"step ≤ {step} per run"


def _base_layout(fig: go.Figure, title: str, x: str | None = None, y: str | None = None,
                 log_y: bool | None = None) -> go.Figure:
    fig.update_layout(
        template="plotly_white", title=dict(text=title), height=_HEIGHT, hovermode="closest",
        legend=dict(title=dict(text="run")), margin=dict(t=70, b=60),
    )
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    if log_y is not None:
        fig.update_yaxes(type="log" if log_y else "linear")
    return fig


def plot_profile(
    stats: pd.DataFrame, metric: str, *, step: int | None = None, sort: bool = False, log_y: bool | None = None,
    runs=None, arch=None, depth=None, title: str | None = None,
) -> go.Figure:
    """Any metric against depth, one trace per run; `sort=True` draws values in descending order (Fig. 7, bottom)."""
    profs = profiles(stats, metric, step=step, runs=runs, arch=arch, depth=depth)
    log_y = metric in LOG_METRICS if log_y is None else log_y
    fig = go.Figure()
    multi = len({p.step for p in profs}) > 1
    for p in profs:
        if sort:
            x, y, li, names = sorted_view(p)
        else:
            x, y, li, names = p.layer_index, p.value, p.layer_index, p.layer
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", marker=dict(size=4),
            line=dict(color=p.run.color, width=2, dash=DASHES[p.part_no % len(DASHES)]),
            name=p.name + (f" @ {p.step}" if multi else ""), legendgroup=p.run.label,
            customdata=customdata(names, li, p.step), hovertemplate=hover(metric),
        ))
    when = _step_text([p.step for p in profs], step)
    text = title or f"{TITLES.get(metric, metric)} — {'sorted, ' if sort else ''}{when}"
    xt = f"rank (sorted by {metric}, descending)" if sort else x_title(metric)
    return _base_layout(fig, text, xt, AXIS_TITLES.get(metric, metric), log_y)


def plot_response_std(stats: pd.DataFrame, *, step: int | None = None, sort: bool = False, **filters) -> go.Figure:
    """He et al. Fig. 7: std of every 3×3 layer's response against layer index (or sorted), one trace per run."""
    fig = plot_profile(stats, "response_std", step=step, sort=sort, log_y=False, **filters)
    fig.add_annotation(text=FIG7_CAPTION, xref="paper", yref="paper", x=0, y=-0.2, xanchor="left",
                       yanchor="top", showarrow=False, font=dict(size=11, color="#555"))
    fig.update_layout(margin=dict(b=100))
    return fig


def plot_gradient_flow(stats: pd.DataFrame, metric: str = "grad_norm", *, step: int | None = None, **filters) -> go.Figure:
    """`grad_norm` (per parameter) or `act_grad_norm` (per block output) against depth, log scale."""
    if metric not in ("grad_norm", "act_grad_norm"):
        raise ValueError(f"metric={metric!r} is not a gradient metric; use 'grad_norm' or 'act_grad_norm'")
    return plot_profile(stats, metric, step=step, log_y=True, **filters)


def _paired(stats, metrics, panels, step, filters, title, log_rows) -> go.Figure:
    """One row per entry of `panels` ((subtitle, y title, [(metric, dash), ...])), one colour per run."""
    found = {}
    for m in metrics:
        try:
            found[m] = profiles(stats, m, step=step, **filters)
        except ValueError:
            continue
    if not found:
        present = sorted(map(str, pd.unique(stats["metric"]))) if len(stats) else []
        raise ValueError(f"no rows for any of {list(metrics)}{_describe_filter(**filters)}; "
                         f"metrics present: {present or 'none (empty table)'}")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[t for t, _, _ in panels])
    chosen = []
    in_legend: set[str] = set()
    for row, (_, ytitle, members) in enumerate(panels, start=1):
        for metric, dash in members:
            for p in found.get(metric, []):
                chosen.append(p.step)
                fig.add_trace(go.Scatter(
                    x=p.layer_index, y=p.value, mode="lines+markers", marker=dict(size=3),
                    line=dict(color=p.run.color, dash=dash if p.part_no == 0 else DASHES[p.part_no % len(DASHES)],
                              width=2),
                    name=p.name, legendgroup=p.run.label, showlegend=p.name not in in_legend,
                    customdata=customdata(p.layer, p.layer_index, p.step), hovertemplate=hover(metric),
                ), row=row, col=1)
                in_legend.add(p.name)
        fig.update_yaxes(title_text=ytitle, type="log" if row in log_rows else "linear", row=row, col=1)
    fig = _base_layout(fig, f"{title} — {_step_text(chosen, step)}")
    fig.update_xaxes(title_text=x_title(next(iter(found))), row=len(panels), col=1)
    fig.update_layout(height=_HEIGHT + 150)
    return fig


def plot_branch_skip(stats: pd.DataFrame, *, step: int | None = None, **filters) -> go.Figure:
    """Per block: branch std (solid) and skip std (dotted) on top, branch/skip ratio (log) below."""
    panels = [
        ("branch std (solid) and skip std (dotted)", "std (a.u.)", [("branch_std", "solid"), ("skip_std", "dot")]),
        ("branch-to-skip ratio", AXIS_TITLES["branch_ratio"], [("branch_ratio", "solid")]),
    ]
    return _paired(stats, ("branch_std", "skip_std", "branch_ratio"), panels, step,
                   _filters(filters), "Residual branch vs skip path", {2})


def plot_signal_propagation(stats: pd.DataFrame, *, step: int | None = None, **filters) -> go.Figure:
    """Signal propagation plot (Brock et al. 2021): squared channel mean and channel variance per block, log."""
    panels = [
        ("squared channel mean", AXIS_TITLES["channel_sq_mean"], [("channel_sq_mean", "solid")]),
        ("channel variance", AXIS_TITLES["channel_var"], [("channel_var", "solid")]),
    ]
    return _paired(stats, ("channel_sq_mean", "channel_var"), panels, step, _filters(filters),
                   "Signal propagation", {1, 2})


def _filters(filters: dict) -> dict:
    bad = set(filters) - {"runs", "arch", "depth"}
    if bad:
        raise TypeError(f"unknown option(s) {sorted(bad)}; filters are runs=, arch=, depth=")
    return {k: filters.get(k) for k in ("runs", "arch", "depth")}


def plot_heatmap(
    stats: pd.DataFrame, metric: str, *, run: str | None = None, log_z: bool | None = None, step: int | None = None,
    part: str | None = None,
) -> go.Figure:
    """The whole training at a glance: layer (y) × step (x) heatmap of one run's `metric`.

    Readable at any depth: y ticks mark the stages rather than every layer; hover names the layer.
    `step` draws a vertical line at that step. A metric with several rows per layer index (channel_var:
    block output and branch) shows one `part` (default: the first; see `split_parts`).
    """
    rows = metric_rows(stats, metric)
    ids = sorted(map(str, pd.unique(rows["run_id"].astype(str)))) if "run_id" in rows.columns else [""]
    if run is None:
        if len(ids) > 1:
            raise ValueError(f"{len(ids)} runs have {metric!r} rows; choose one with run=, one of {ids}")
        run = ids[0]
    rows = rows[(rows["run_id"].astype(str) == run).to_numpy()] if "run_id" in rows.columns else rows
    if rows.empty:
        raise ValueError(f"run={run!r} has no {metric!r} rows; runs with it: {ids}")
    (info,) = runs_of(rows)[:1]
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
    z, stage, block, cols = z[keep], stage[keep], block[keep], cols[keep]
    idx, names = cols // n_names, np.asarray(uniq, dtype=object)[cols % n_names]
    log_z = metric in LOG_METRICS if log_z is None else log_z
    shown = np.log10(np.where(z > 0, z, np.nan)) if log_z else z
    colorbar = dict(title=dict(text=AXIS_TITLES.get(metric, metric).split(" (")[0] + (" (log)" if log_z else "")))
    if log_z and np.isfinite(shown).any():
        lo, hi = math.floor(np.nanmin(shown)), math.ceil(np.nanmax(shown))
        ticks = list(range(lo, hi + 1))
        colorbar.update(tickvals=ticks, ticktext=[f"1e{t}" for t in ticks])
    fig = go.Figure(go.Heatmap(
        x=steps, y=idx, z=shown, customdata=np.broadcast_to(names[:, None], z.shape),
        colorscale="Viridis", colorbar=colorbar,
        hovertemplate=f"<b>%{{customdata}}</b><br>index %{{y}} · step %{{x}}<br>{metric} = %{{text}}<extra></extra>",
        text=np.vectorize(lambda v: f"{v:.4g}")(z),
    ))
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
    if step is not None:
        fig.add_vline(x=pick_step(steps, step), line=dict(color="white", dash="dash", width=1))
    title = f"{TITLES.get(metric, metric)} over training — {info.label}" + (f" ({part})" if part else "")
    fig = _base_layout(fig, title, STEP_AXIS, x_title(metric), False)
    fig.update_layout(height=_HEIGHT + 100, legend=dict(title=None))
    return fig


def plot_training_curves(
    metrics: pd.DataFrame, *, step: int | None = None, runs=None, arch=None, depth=None,
) -> go.Figure:
    """He et al. Fig. 6: training error dashed, test error bold, against iterations, one colour per run.

    `step` draws a vertical line there. Test error is drawn where it was evaluated (NaN rows skipped).
    """
    need = [c for c in ("step", "train_error", "test_error") if c not in metrics.columns]
    if need:
        raise ValueError(f"training table is missing column(s) {need}; pass RunSet.metrics (metrics.parquet rows)")
    rows = _filter(metrics, runs, arch, depth)
    if rows.empty:
        raise ValueError(f"no training rows{_describe_filter(runs, arch, depth)}; the runs have not logged a step yet")
    fig = go.Figure()
    for run, g in _by_run(rows):
        g = g.sort_values("step", kind="stable")
        x = g["step"].to_numpy()
        train = 100 * g["train_error"].to_numpy(np.float64)
        test = 100 * g["test_error"].to_numpy(np.float64)
        ok = ~np.isnan(test)
        hov = "%{x} iterations<br>%{y:.2f} %<extra>%{fullData.name}</extra>"
        fig.add_trace(go.Scatter(x=x, y=train, mode="lines", name=f"{run.label} train", legendgroup=run.label,
                                 line=dict(color=run.color, dash="dash", width=1.5), hovertemplate=hov))
        if ok.any():
            fig.add_trace(go.Scatter(x=x[ok], y=test[ok], mode="lines", name=f"{run.label} test",
                                     legendgroup=run.label, line=dict(color=run.color, width=3.5),
                                     hovertemplate=hov))
    if step is not None:
        fig.add_vline(x=step, line=dict(color="#888", dash="dot", width=1))
    title = "Training (dashed) and test (bold) error"
    return _base_layout(fig, title, STEP_AXIS, "error (%)", False)


def plot_error_vs_depth(metrics: pd.DataFrame, *, runs=None, arch=None, depth=None) -> go.Figure:
    """He et al.'s degradation at a glance: each run's final training (dashed) and test (bold) error
    against depth, one line per architecture. Training error is the last logged interval's; test error the
    last evaluation's. Several runs at one depth (seeds) are averaged."""
    need = [c for c in ("step", "train_error", "test_error", "arch", "depth") if c not in metrics.columns]
    if need:
        raise ValueError(f"training table is missing column(s) {need}; pass RunSet.metrics (metrics.parquet rows)")
    rows = _filter(metrics, runs, arch, depth)
    if rows.empty:
        raise ValueError(f"no training rows{_describe_filter(runs, arch, depth)}; the runs have not logged a step yet")
    finals = []
    for run, g in _by_run(rows):
        g = g.sort_values("step", kind="stable")
        tested = g["test_error"].to_numpy(np.float64)
        tested = tested[~np.isnan(tested)]
        finals.append((run.arch, run.depth, 100 * float(g["train_error"].iloc[-1]),
                       100 * tested[-1] if len(tested) else np.nan, run.label))
    table = pd.DataFrame(finals, columns=["arch", "depth", "train", "test", "label"])
    fig = go.Figure()
    order = sorted(pd.unique(table["arch"]), key=lambda a: {"plain": 0, "resnet": 1}.get(a, 2))
    for a in order:
        t = table[table["arch"] == a].groupby("depth", sort=True).agg(
            train=("train", "mean"), test=("test", "mean"), n=("label", "size")).reset_index()
        color = run_color(a, int(np.median(t["depth"])))
        hov = "depth %{x}<br>%{y:.2f} %<br>%{customdata} run(s)<extra>%{fullData.name}</extra>"
        fig.add_trace(go.Scatter(x=t["depth"], y=t["train"], mode="lines+markers", name=f"{arch_name(a)} train",
                                 legendgroup=a, line=dict(color=color, dash="dash", width=1.5),
                                 customdata=t["n"], hovertemplate=hov))
        if t["test"].notna().any():
            fig.add_trace(go.Scatter(x=t["depth"], y=t["test"], mode="lines+markers", name=f"{arch_name(a)} test",
                                     legendgroup=a, line=dict(color=color, width=3.5), customdata=t["n"],
                                     hovertemplate=hov))
    fig.update_xaxes(tickvals=sorted(pd.unique(table["depth"])))
    fig = _base_layout(fig, "Final training (dashed) and test (bold) error against depth", "depth (layers)",
                       "error (%)", False)
    return fig.update_layout(legend=dict(title=dict(text="architecture")))


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
    groups = _by_run(rows)
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
    title = f"Per-channel response std (dots) and pooled std (line) — {_step_text(chosen, step)}"
    return _base_layout(fig, title, x_title("response_std"), AXIS_TITLES["response_channel_std"], False)


def plot_bn_check(table: pd.DataFrame) -> go.Figure:
    """The BN γ/β cross-check: measured response std (y) against sqrt(mean γ² + var β) from the weights (x),
    one dot per BN layer, one colour per run, with the line measured = predicted. `table` is
    `resviz.bn_check.cross_check(...)`."""
    need = [c for c in ("run_id", "layer", "layer_index", "measured", "predicted") if c not in table.columns]
    if need:
        raise ValueError(
            f"cross-check table is missing column(s) {need}; pass resviz.bn_check.cross_check(nets, stats)")
    if table.empty:
        raise ValueError("the cross-check table is empty; measure some networks with resviz.bn_check.measure first")
    fig = go.Figure()
    for run, g in _by_run(table):
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
    return _base_layout(fig, "BN cross-check: measured response std vs the γ/β prediction",
                        "predicted: √(mean γ² + var β) (a.u.)", "measured response std (a.u.)", False)


def standard_figures(
    stats: pd.DataFrame, metrics: pd.DataFrame | None = None, *, step: int | None = None,
) -> tuple[dict[str, go.Figure], dict[str, str]]:
    """The report's figures for whatever the tables hold: (name -> figure, name -> why it was skipped)."""
    makers = {
        "training_curves": (lambda: plot_training_curves(metrics, step=step)) if metrics is not None else None,
        "response_std": lambda: plot_response_std(stats, step=step),
        "response_std_sorted": lambda: plot_response_std(stats, step=step, sort=True),
        "grad_norm": lambda: plot_gradient_flow(stats, "grad_norm", step=step),
        "act_grad_norm": lambda: plot_gradient_flow(stats, "act_grad_norm", step=step),
        "branch_skip": lambda: plot_branch_skip(stats, step=step),
        "signal_propagation": lambda: plot_signal_propagation(stats, step=step),
    }
    figs: dict[str, go.Figure] = {}
    skipped: dict[str, str] = {}
    for name, make in makers.items():
        if make is None:
            skipped[name] = "no training table"
            continue
        try:
            figs[name] = make()
        except ValueError as err:
            skipped[name] = str(err)
    if "response_std" in figs:
        ids = sorted(map(str, pd.unique(metric_rows(stats, "response_std")["run_id"].astype(str))))
        for rid in ids:
            figs[f"heatmap_response_std_{rid or 'run'}"] = plot_heatmap(stats, "response_std", run=rid, step=step)
    return figs, skipped


# =============================================================================================================
# Labs (notebooks 05-08): normalisation invariance and batch dependence, lesions, shattered gradients, signal
# propagation at init and branch scales over training. Inputs are the frames of resviz.analysis.*.
# =============================================================================================================
NORM_COLORS = {"batch": "#d62728", "layer": "#1f77b4", "group": "#2ca02c", "none": "#7f7f7f", "weight": "#9467bd",
               "rms": "#8c564b"}
VARIANT_COLORS = {"BN-ResNet": "#2166ac", "ResNet, no norm": "#d6604d", "SkipInit": "#1b9e77", "ReZero": "#7570b3",
                  "Fixup": "#e6ab02", "plain, BN": "#a50f15", "plain, no norm": "#fdb863"}
_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
_VARIANT_DASHES = {"ReZero": "dash", "Fixup": "dot"}  # SkipInit, ReZero and Fixup coincide at init: keep all visible
_YES, _NO, _ABSENT = "#92c5de", "#f4a582", "#f0f0f0"


def _need(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"table is missing column(s) {missing}; pass {what}")
    if frame.empty:
        raise ValueError(f"the table is empty; pass {what}")


def label_color(label: str, known: dict[str, str] = VARIANT_COLORS) -> str:
    """A fixed colour for a named variant (any case: "fixup" is "Fixup"); other labels get a palette colour from a
    hash (stable across figures)."""
    lowered = {k.lower(): v for k, v in known.items()}
    if str(label).lower() in lowered:
        return lowered[str(label).lower()]
    return _PALETTE[hashlib.sha1(str(label).encode()).digest()[0] % len(_PALETTE)]


def short_run_names(ids) -> dict[str, str]:
    """{run_id: the parts of it ("-"-separated) that not all ids share}, e.g. the three runs
    "digits-resnet20-none-scA-{skipinit,rezero,fixup}-w8-s0" -> "skipinit", "rezero", "fixup". Ids are kept
    whole when nothing is shared or the short names would clash."""
    ids = list(dict.fromkeys(map(str, ids)))
    if len(ids) < 2:
        return {i: i for i in ids}
    parts = [i.split("-") for i in ids]
    shared = set(parts[0]).intersection(*map(set, parts[1:]))
    short = {i: "-".join(t for t in p if t not in shared) for i, p in zip(ids, parts)}
    if not shared or "" in short.values() or len(set(short.values())) < len(ids):
        return {i: i for i in ids}
    return short


# ----------------------------------------------------------------------------------- 05: normalisation
def plot_invariance_grid(frame: pd.DataFrame) -> go.Figure:
    """Ba et al. Table 1 measured (left) beside the published table (right): norm rows × transformation columns,
    "yes" = invariant. Measured cells show the relative change of the outputs; hovering a cell explains it.
    `frame` is `resviz.analysis.invariance.measure_invariance()`."""
    from resviz.analysis.invariance import NORMS, THEORY, TRANSFORMATION_LABELS, TRANSFORMATIONS

    _need(frame, ("norm", "transformation", "invariant", "relative_deviation", "paper"),
          "resviz.analysis.invariance.measure_invariance()")
    norms = [n for n in NORMS if n in set(frame["norm"])]
    trans = [t for t in TRANSFORMATIONS if t in set(frame["transformation"])]
    cell = {(r.norm, r.transformation): r for r in frame.itertuples(index=False)}
    shape = (len(norms), len(trans))
    z_m, z_p = np.full(shape, np.nan), np.full(shape, np.nan)  # (norms, transformations): 1 yes, 0 no
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
            why = THEORY[n][t][1]
            hover_m[i, j] = (f"<b>{n} · {TRANSFORMATION_LABELS[t]}</b><br>measured: "
                             f"{'invariant' if r.invariant else 'not invariant'}"
                             f" (relative change {r.relative_deviation:.1e})<br>paper: "
                             f"{'—' if paper is None else ('yes' if paper else 'no')}<br>why: {why}")
            if paper is not None:
                z_p[i, j] = float(paper)
                text_p[i, j] = "yes" if paper else "no"
            else:
                text_p[i, j] = "not in<br>the paper"
    x = [TRANSFORMATION_LABELS[t] for t in trans]
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
    fig = _base_layout(fig, "Invariance under weight and data transformations: yes = the layer's output is unchanged")
    return fig.update_layout(height=420, margin=dict(t=90, b=110))


def default_batch_size(frame: pd.DataFrame) -> int:
    """The batch size a batch-dependence figure shows first: the smallest measured size above 1."""
    sizes = np.sort(pd.unique(frame["batch_size"]).astype(int))
    return int(sizes[sizes > 1][0]) if (sizes > 1).any() else int(sizes[0])


def _dependence_label(frame: pd.DataFrame) -> str:
    return "net" if "net" in frame.columns else "norm"


def _dependence_order(frame: pd.DataFrame, key: str) -> list[str]:
    """Labels plain before ResNet, then batch, layer, group, none (as measured for other names)."""
    first = frame.drop_duplicates(key)
    norms = _norm_order(first["norm"]) if "norm" in first.columns else []
    def rank(r):
        arch = {"plain": 0, "resnet": 1}.get(str(getattr(r, "arch", "")), 2)
        norm = norms.index(str(r.norm)) if "norm" in first.columns else 0
        return (arch, int(getattr(r, "depth", 0)), norm)
    rows = sorted(first.itertuples(index=False), key=rank)
    return [str(getattr(r, key)) for r in rows]


def plot_batch_dependence(frame: pd.DataFrame, *, batch_size: int | None = None) -> go.Figure:
    """How much one example's logits change with the rest of its (train-mode) batch, in % of its logits' scale.

    Left: against batch size (line = the largest change over the draws, dots = each draw), a dotted line at
    `batch_size`. Right: each net at `batch_size` (bar = mean over draws, whiskers = min..max). `frame` is
    `batch_dependence(...)` or `batch_dependence_nets(...)`. Default batch_size: the smallest above 1."""
    _need(frame, ("batch_size", "draw", "max_change", "logit_scale"),
          "resviz.analysis.invariance.batch_dependence_nets(...) or batch_dependence(...)")
    key = _dependence_label(frame)
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
    styles = {}
    for label in labels:
        g = data[(data[key].astype(str) == label).to_numpy()]
        norm = str(g["norm"].iloc[0]) if "norm" in g.columns else label
        arch = str(g["arch"].iloc[0]) if "arch" in g.columns else "resnet"
        styles[label] = (NORM_COLORS.get(norm, label_color(label)), "dash" if arch == "plain" else "solid")
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
    fig = _base_layout(fig, f"Does one example's output depend on its batch? (train mode, batch size {batch_size})")
    return fig.update_layout(legend=dict(title=dict(text="net")))


def _bars_at(data: pd.DataFrame, key: str, label: str, batch_size: int) -> tuple[str, float, float, float]:
    """(label, mean, min, max) of the % change of `label` at `batch_size` (NaN when not measured)."""
    g = data[((data[key].astype(str) == label) & (data["batch_size"] == batch_size)).to_numpy()]["_pct"]
    if g.empty:
        return label, math.nan, math.nan, math.nan
    return label, float(g.mean()), float(g.min()), float(g.max())


def _norm_order(values) -> list[str]:
    order = ["batch", "layer", "group", "none"]
    present = list(dict.fromkeys(map(str, values)))
    return [n for n in order if n in present] + [n for n in present if n not in order]


def plot_norm_comparison(metrics: pd.DataFrame, stats: pd.DataFrame, *, step: int | None = None,
                         depth=None) -> go.Figure:
    """One column per normalisation: training (dashed) and test (bold) error over training on top, the response
    std of every 3×3 layer (He et al. Fig. 7, log scale) at `step` (default: the last) below; plain nets warm,
    ResNets cool, in every column the same colour."""
    need = [c for c in ("step", "train_error", "test_error", "norm") if c not in metrics.columns]
    if need:
        raise ValueError(f"training table is missing column(s) {need}; pass RunSet.metrics of runs with several norms")
    rows = _filter(metrics, None, None, depth)
    if rows.empty:
        raise ValueError(f"no training rows{_describe_filter(None, None, depth)}; train the runs first")
    norms = _norm_order(rows["norm"])
    profs = profiles(stats, "response_std", step=step, depth=depth)
    fig = make_subplots(rows=2, cols=len(norms), shared_yaxes=True, shared_xaxes=False, vertical_spacing=0.14,
                        horizontal_spacing=0.03, subplot_titles=[f"norm = {n}" for n in norms])
    shown: set[str] = set()
    hov = "%{x} iterations<br>%{y:.2f} %<extra>%{fullData.name}</extra>"
    for run, g in _by_run(rows):
        col = norms.index(run.norm) + 1
        g = g.sort_values("step", kind="stable")
        color = run_color(run.arch, run.depth)
        name = run_label(run.arch, run.depth)
        test = 100 * g["test_error"].to_numpy(np.float64)
        ok = ~np.isnan(test)
        fig.add_trace(go.Scatter(x=g["step"], y=100 * g["train_error"].to_numpy(np.float64), mode="lines",
                                 name=f"{name} train", legendgroup=name, showlegend=f"{name} train" not in shown,
                                 line=dict(color=color, dash="dash", width=1.5), hovertemplate=hov), row=1, col=col)
        shown.add(f"{name} train")
        if ok.any():
            fig.add_trace(go.Scatter(x=g["step"].to_numpy()[ok], y=test[ok], mode="lines+markers",
                                     name=f"{name} test", legendgroup=name, showlegend=f"{name} test" not in shown,
                                     line=dict(color=color, width=3), marker=dict(size=6), hovertemplate=hov),
                          row=1, col=col)
            shown.add(f"{name} test")
    chosen = []
    for p in profs:
        if p.run.norm not in norms:
            continue
        chosen.append(p.step)
        name = run_label(p.run.arch, p.run.depth)
        fig.add_trace(go.Scatter(x=p.layer_index, y=p.value, mode="lines+markers", marker=dict(size=4),
                                 line=dict(color=run_color(p.run.arch, p.run.depth), width=2), name=name,
                                 legendgroup=name, showlegend=False,
                                 customdata=customdata(p.layer, p.layer_index, p.step),
                                 hovertemplate=hover("response_std")), row=2, col=norms.index(p.run.norm) + 1)
    fig.update_yaxes(title_text="error (%)", row=1, col=1)
    fig.update_yaxes(title_text=AXIS_TITLES["response_std"], type="log", row=2, col=1)
    for c in range(1, len(norms) + 1):
        fig.update_yaxes(type="log", row=2, col=c)
        fig.update_xaxes(title_text="iteration", row=1, col=c)
        fig.update_xaxes(title_text="layer index", row=2, col=c)
    when = _step_text(chosen, step) if chosen else "the last step"
    title = f"Normalisations side by side: training (top), response std at {when} (bottom)"
    fig = _base_layout(fig, title)
    return fig.update_layout(height=_HEIGHT + 250, legend=dict(title=dict(text="net")))


def plot_final_error_by_norm(metrics: pd.DataFrame, *, depth=None) -> go.Figure:
    """Final test error (bars) and final training error (diamonds) for each normalisation, plain and ResNet side
    by side. Test error is the last evaluation's, training error the last logged interval's."""
    need = [c for c in ("step", "train_error", "test_error", "norm", "arch", "depth") if c not in metrics.columns]
    if need:
        raise ValueError(f"training table is missing column(s) {need}; pass RunSet.metrics")
    rows = _filter(metrics, None, None, depth)
    if rows.empty:
        raise ValueError(f"no training rows{_describe_filter(None, None, depth)}; train the runs first")
    finals = []
    for run, g in _by_run(rows):
        g = g.sort_values("step", kind="stable")
        tested = g["test_error"].to_numpy(np.float64)
        tested = tested[~np.isnan(tested)]
        finals.append((run.arch, run.depth, run.norm, 100 * float(g["train_error"].iloc[-1]),
                       100 * tested[-1] if len(tested) else np.nan))
    table = pd.DataFrame(finals, columns=["arch", "depth", "norm", "train", "test"])
    table = table.groupby(["arch", "depth", "norm"], as_index=False)[["train", "test"]].mean()  # seeds averaged
    norms = _norm_order(table["norm"])
    fig = go.Figure()
    for (arch, d), g in table.groupby(["arch", "depth"], sort=False):
        g = g.set_index("norm").reindex(norms)
        name, color = run_label(arch, d), run_color(arch, d)
        fig.add_trace(go.Bar(x=norms, y=g["test"], name=f"{name} test", marker=dict(color=color), offsetgroup=name,
                             hovertemplate="%{x}: test %{y:.2f} %<extra>" + name + "</extra>"))
        fig.add_trace(go.Scatter(x=norms, y=g["train"], mode="markers", name=f"{name} train", offsetgroup=name,
                                 marker=dict(color=color, symbol="diamond", size=10,
                                             line=dict(color="#222", width=1.5)),
                                 hovertemplate="%{x}: train %{y:.2f} %<extra>" + name + "</extra>"))
    fig = _base_layout(fig, "Final error by normalisation: test (bars), training (diamonds)", "normalisation",
                       "error (%)", False)
    return fig.update_layout(barmode="group", scattermode="group", legend=dict(title=dict(text="net")))


# ----------------------------------------------------------------------------------- 06: lesion study
def plot_lesion(single: pd.DataFrame, random: pd.DataFrame | None = None) -> go.Figure:
    """Veit et al. 2016: test error after removing each block (left; dashed: the intact net; diamonds:
    downsampling blocks) and, with `random`, after removing k random blocks (right; mean ± std over draws, dots:
    each draw). Frames from `resviz.analysis.lesion.lesion_nets` (one or several nets)."""
    _need(single, ("run_id", "arch", "depth", "position", "block", "downsample", "error", "baseline_error"),
          "the first frame of resviz.analysis.lesion.lesion_nets(...)")
    cols = 2 if random is not None else 1
    fig = make_subplots(rows=1, cols=cols, horizontal_spacing=0.1,
                        subplot_titles=["remove one block", "remove k random blocks"][:cols])
    for run, g in _by_run(single):
        g = g.sort_values("position", kind="stable")
        pos = g["position"].to_numpy()
        err = 100 * g["error"].to_numpy(np.float64)
        base = 100 * float(g["baseline_error"].iloc[0])
        down = g["downsample"].to_numpy(bool)
        cd = np.empty((len(g), 2), dtype=object)  # (blocks, 2): block name, change in points
        cd[:, 0], cd[:, 1] = g["block"].astype(str).to_numpy(), err - base
        fig.add_trace(go.Scatter(
            x=pos, y=err, mode="lines+markers", name=run.label, legendgroup=run.label,
            line=dict(color=run.color, width=2),
            marker=dict(symbol=np.where(down, "diamond", "circle"), size=np.where(down, 11, 6), color=run.color),
            customdata=cd,
            hovertemplate=("<b>%{customdata[0]}</b> removed<br>error %{y:.2f} % (%{customdata[1]:+.2f} points)"
                           "<extra>%{fullData.name}</extra>"),
        ), row=1, col=1)
        fig.add_trace(go.Scatter(x=[pos.min() - 0.5, pos.max() + 0.5], y=[base, base], mode="lines",
                                 name=f"{run.label} intact", legendgroup=run.label, showlegend=False,
                                 line=dict(color=run.color, dash="dash", width=1),
                                 hovertemplate=f"{run.label} intact: {base:.2f} %<extra></extra>"), row=1, col=1)
    fig.update_xaxes(title_text="removed block (position along depth)", row=1, col=1)
    fig.update_yaxes(title_text="test error (%)", row=1, col=1)
    if random is not None:
        _need(random, ("run_id", "arch", "depth", "k", "error", "baseline_error"),
              "the second frame of resviz.analysis.lesion.lesion_nets(..., ks=...)")
        for run, g in _by_run(random):
            base = 100 * float(g["baseline_error"].iloc[0])
            stats = g.groupby("k")["error"].agg(["mean", "std", "size"]).reset_index()
            k = np.r_[0, stats["k"].to_numpy()]
            mean = np.r_[base, 100 * stats["mean"].to_numpy()]
            std = np.r_[0.0, 100 * stats["std"].fillna(0.0).to_numpy()]
            fig.add_trace(go.Scatter(x=k, y=mean, mode="lines+markers", name=run.label, legendgroup=run.label,
                                     showlegend=False, line=dict(color=run.color, width=2),
                                     error_y=dict(type="data", array=std, thickness=1),
                                     hovertemplate=("k = %{x}: %{y:.2f} % ± %{error_y.array:.2f}"
                                                    "<extra>%{fullData.name}</extra>")),
                          row=1, col=2)
            fig.add_trace(go.Scatter(x=g["k"], y=100 * g["error"].to_numpy(np.float64), mode="markers",
                                     name=f"{run.label} draws", legendgroup=run.label, showlegend=False,
                                     marker=dict(color=run.color, size=5, opacity=0.35),
                                     customdata=g["removed"].astype(str) if "removed" in g.columns else None,
                                     hovertemplate=("k = %{x}: %{y:.2f} %<br>%{customdata}"
                                                    "<extra>%{fullData.name}</extra>")),
                          row=1, col=2)
        fig.update_xaxes(title_text="blocks removed at random (k)", row=1, col=2)
        fig.update_yaxes(title_text="test error (%)", row=1, col=2)
    return _base_layout(fig, "Lesion study: test error after removing residual blocks at test time")


# ----------------------------------------------------------------------------------- 07: shattered gradients
_ARCH_NORM_STYLE = {("plain", "batch"): ("#d7301f", "solid"), ("plain", "none"): ("#fdb863", "dash"),
                    ("resnet", "batch"): ("#2166ac", "solid"), ("resnet", "none"): ("#66c2a5", "dash")}


def plot_shattering(frame: pd.DataFrame) -> go.Figure:
    """Balduzzi et al. 2017 at initialisation: lag-1 autocorrelation of the input gradients along a line (top)
    and their mean correlation over all pairs (bottom) against depth, one line per (architecture, norm); mean
    over seeds, whiskers min..max. `frame` is `resviz.analysis.shattered.shattering_vs_depth(...)`."""
    _need(frame, ("arch", "norm", "depth", "autocorrelation", "mean_correlation"),
          "resviz.analysis.shattered.shattering_vs_depth(...)")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=["neighbouring inputs (lag-1 autocorrelation)", "all pairs (mean correlation)"])
    order = sorted(frame.groupby(["arch", "norm"]).groups, key=lambda t: ({"plain": 0, "resnet": 1}.get(t[0], 2), t[1]))
    for arch, norm in order:
        g = frame[((frame["arch"] == arch) & (frame["norm"] == norm)).to_numpy()]
        name = f"{arch_name(arch)}, {'BN' if norm == 'batch' else norm if norm != 'none' else 'no norm'}"
        color, dash = _ARCH_NORM_STYLE.get((arch, norm), (label_color(name), "dot"))
        for row, col in ((1, "autocorrelation"), (2, "mean_correlation")):
            s = g.groupby("depth")[col].agg(["mean", "min", "max"]).reset_index()
            fig.add_trace(go.Scatter(
                x=s["depth"], y=s["mean"], mode="lines+markers", name=name, legendgroup=name, showlegend=row == 1,
                line=dict(color=color, dash=dash, width=2),
                error_y=dict(type="data", symmetric=False, array=s["max"] - s["mean"],
                             arrayminus=s["mean"] - s["min"], thickness=1),
                hovertemplate="depth %{x}: %{y:.3f}<extra>%{fullData.name}</extra>"), row=row, col=1)
    fig.update_yaxes(title_text="correlation", row=1, col=1)
    fig.update_yaxes(title_text="correlation", row=2, col=1)
    fig.update_xaxes(title_text="depth (layers)", tickvals=sorted(pd.unique(frame["depth"])), row=2, col=1)
    fig = _base_layout(fig, "Shattered gradients at initialisation: how alike are the gradients of nearby inputs?")
    return fig.update_layout(height=_HEIGHT + 150, legend=dict(title=dict(text="net")))


def plot_gradient_correlation(results: dict) -> go.Figure:
    """The correlation (cosine similarity) of the input gradients of every pair of inputs on the line, one heatmap
    per net (Balduzzi et al.'s covariance matrices): a bright band around the diagonal means nearby inputs have
    alike gradients; a lone diagonal is white noise. `results`: {label: GradientCorrelation}, e.g.
    `resviz.analysis.shattered.correlation_matrices(...)`."""
    if not results:
        raise ValueError("no results to draw; pass resviz.analysis.shattered.correlation_matrices(...)")
    labels = list(results)
    cols = 2 if len(labels) == 4 else min(len(labels), 3)
    nrows = math.ceil(len(labels) / cols)
    titles = [f"{k} (lag-1 r = {results[k].lag1:.2f})".replace("r = -0.00", "r = 0.00") for k in labels]
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=0.12)
    for i, label in enumerate(labels):
        corr = np.asarray(results[label].correlation)  # (n, n)
        r, c = divmod(i, cols)
        fig.add_trace(go.Heatmap(z=corr, coloraxis="coloraxis", name=label,
                                 hovertemplate="inputs %{y} and %{x}<br>correlation %{z:.3f}<extra>" + label
                                 + "</extra>"), row=r + 1, col=c + 1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i + 1 if i else ''}", row=r + 1, col=c + 1)
    fig.update_xaxes(title_text="input index along the line")
    fig = _base_layout(fig, "Gradient correlation between inputs on a line, at initialisation")
    return fig.update_layout(height=380 * nrows + 100,
                             coloraxis=dict(colorscale="RdBu", reversescale=True, cmin=-1, cmax=1,
                                            colorbar=dict(title=dict(text="correlation"))))


def plot_autocorrelation(results: dict) -> go.Figure:
    """Mean correlation of input gradients k steps apart on the line, against k, one line per net."""
    if not results:
        raise ValueError("no results to draw; pass resviz.analysis.shattered.correlation_matrices(...)")
    fig = go.Figure()
    for label, r in results.items():
        arch = "plain" if str(label).startswith("plain") else "resnet"
        norm = "none" if "no norm" in str(label) else "batch"  # labels of correlation_matrices
        color, dash = _ARCH_NORM_STYLE.get((arch, norm), (label_color(label), "dot"))
        fig.add_trace(go.Scatter(x=np.asarray(r.lags), y=np.asarray(r.autocorrelation), mode="lines+markers",
                                 name=label, line=dict(color=color, dash=dash, width=2),
                                 hovertemplate="lag %{x}: %{y:.3f}<extra>%{fullData.name}</extra>"))
    return _base_layout(fig, "Gradient autocorrelation against distance on the line",
                        "lag (inputs apart on the line)", "mean correlation", False)


# ----------------------------------------------------------------------------------- 08: signal propagation
def _signal_rows(frame: pd.DataFrame, step) -> dict[str, pd.DataFrame]:
    """run_id -> rows at `step` (default each run's last), averaged over seeds: (layer, layer_index, metric)."""
    out = {}
    for run in dict.fromkeys(frame["run_id"].astype(str)):
        g = frame[(frame["run_id"].astype(str) == run).to_numpy()]
        s = pick_step(np.unique(g["step"].to_numpy()), step)
        g = g[(g["step"] == s).to_numpy()]
        out[run] = (g.assign(layer=g["layer"].astype(str), metric=g["metric"].astype(str))
                    .groupby(["layer_index", "layer", "metric"], as_index=False)["value"].mean().assign(step=s))
    return out


def plot_signal_propagation_init(frame: pd.DataFrame, *, step: int | None = None) -> go.Figure:
    """Brock et al. 2021's signal propagation plot for several nets (one colour per run_id, e.g. the variants of
    `resviz.analysis.signal.signal_at_init`): E[x²] = squared channel mean + channel variance at each block's
    output, the squared channel mean alone, and the variance at the end of the residual branch; log scales.
    A branch whose variance is exactly 0 (SkipInit, ReZero, Fixup at init) is named "≡ 0" and not drawn.
    Legend names are the run ids, shortened to what tells them apart (`short_run_names`)."""
    _need(frame, ("run_id", "layer", "layer_index", "metric", "value", "step"),
          "resviz.analysis.signal.signal_at_init(...) or a stats table with channel_sq_mean / channel_var")
    rows = frame[frame["metric"].astype(str).isin(["channel_sq_mean", "channel_var"]).to_numpy()]
    if rows.empty:
        raise ValueError("no channel_sq_mean / channel_var rows; record them (signal_propagation, or a Recorder)")
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=["E[x²] at each block's output (squared mean + variance)",
                                        "squared channel mean at each block's output",
                                        "channel variance at the end of the residual branch"])
    chosen = []
    by_run = _signal_rows(rows, step)
    names = short_run_names(by_run)
    for run_id, g in by_run.items():
        chosen.append(int(g["step"].iloc[0]))
        run = names[run_id]
        color, dash = label_color(run), _VARIANT_DASHES.get(run, "solid")
        out = g[g["layer"].str.endswith(".probe_out")].pivot(index=["layer_index", "layer"], columns="metric",
                                                                values="value").reset_index()
        branch = g[g["layer"].str.endswith(".probe_branch") & (g["metric"] == "channel_var")]
        hov = "<b>%{customdata}</b><br>%{y:.4g}<extra>%{fullData.name}</extra>"
        if {"channel_sq_mean", "channel_var"} <= set(out.columns):
            fig.add_trace(go.Scatter(x=out["layer_index"], y=out["channel_sq_mean"] + out["channel_var"],
                                     mode="lines+markers", marker=dict(size=4), name=run, legendgroup=run,
                                     line=dict(color=color, width=2, dash=dash), customdata=out["layer"],
                                     hovertemplate=hov), row=1, col=1)
            fig.add_trace(go.Scatter(x=out["layer_index"], y=out["channel_sq_mean"], mode="lines+markers",
                                     marker=dict(size=4), name=run, legendgroup=run, showlegend=False,
                                     line=dict(color=color, width=2, dash=dash), customdata=out["layer"],
                                     hovertemplate=hov),
                          row=2, col=1)
        if len(branch):
            y = branch["value"].to_numpy(np.float64)
            zero = bool((y == 0).all())
            fig.add_trace(go.Scatter(x=branch["layer_index"], y=np.where(y > 0, y, np.nan), mode="lines+markers",
                                     marker=dict(size=4), name=f"{run} (branch ≡ 0)" if zero else run,
                                     legendgroup=run, showlegend=zero, line=dict(color=color, width=2, dash="dot"),
                                     customdata=branch["layer"], hovertemplate=hov), row=3, col=1)
    for r, title in ((1, "E[x²] (a.u.²)"), (2, "squared channel mean (a.u.²)"),
                     (3, "branch variance (a.u.²)")):
        fig.update_yaxes(type="log", title_text=title, row=r, col=1)
    fig.update_xaxes(title_text=x_title("channel_var"), row=3, col=1)
    fig = _base_layout(fig, f"Signal propagation — {_step_text(chosen, step)}")
    return fig.update_layout(height=_HEIGHT + 350, legend=dict(title=dict(text="net")))


def plot_branch_scales(stats: pd.DataFrame, *, runs=None) -> go.Figure:
    """The learnable branch scales α (SkipInit / ReZero / Fixup) of every block over training: one panel per run,
    one line per block, darker = deeper; panels titled by `short_run_names`. `stats`: a run's tidy table (the
    Recorder records `branch_scale`)."""
    rows = metric_rows(stats, "branch_scale", runs=runs)
    ids = list(dict.fromkeys(rows["run_id"].astype(str))) if "run_id" in rows.columns else [""]
    names = short_run_names(ids)
    fig = make_subplots(rows=1, cols=len(ids), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[names[i] for i in ids])
    for c, rid in enumerate(ids, start=1):
        g = rows[(rows["run_id"].astype(str) == rid).to_numpy()] if "run_id" in rows.columns else rows
        layers = g.drop_duplicates("layer").sort_values("layer_index")
        n = max(len(layers) - 1, 1)
        for k, (name, li) in enumerate(zip(layers["layer"].astype(str), layers["layer_index"])):
            b = g[(g["layer"].astype(str) == name).to_numpy()].sort_values("step")
            block = name.removesuffix(".branch_scale")
            fig.add_trace(go.Scatter(
                x=b["step"], y=b["value"], mode="lines", name=block, legendgroup=block, showlegend=c == 1,
                line=dict(color=sample_colorscale("Viridis", [0.9 * (1 - k / n)])[0], width=1.5),
                hovertemplate=f"<b>{block}</b> (index {li})<br>step %{{x}}: α = %{{y:.4g}}<extra>{rid}</extra>"),
                row=1, col=c)
        fig.update_xaxes(title_text=STEP_AXIS, row=1, col=c)
    fig.update_yaxes(title_text=AXIS_TITLES["branch_scale"], row=1, col=1)
    fig = _base_layout(fig, "Learnable branch scales α over training (darker = deeper block)")
    return fig.update_layout(legend=dict(title=dict(text="block")))
