"""Figures of the training log (RunSet.metrics) against step: error curves (He et al. Fig. 6) and the degradation
problem at a glance (final error against depth), with every seed present: a mean line and a min–max band.

`final_errors` is each run's last training and test error, shared with the normalisation figures.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from resviz import reference
from resviz.plots.selection import by_run, training_rows
from resviz.plots.style import STEP_AXIS, arch_name, arch_rank, base_layout, run_color
from resviz.plots.words import add_caption, count_text, facts

METRICS_HINT = "pass RunSet.metrics (metrics.parquet rows)"
# Published CIFAR-10 test errors (%) of ResNets by depth (resviz.reference: each labelled as its source states
# it), drawn on the error-vs-depth figure for reference.
PAPER_ERRORS = {f"{source} ({reference.DATA})": reference.published_errors(source) for source in reference.PUBLISHED}
PAPER_STYLE = {reference.HE_2015: ("#555555", "x"), reference.AKAMASTER: ("#999999", "cross")}
CURVES = (  # column, legend suffix, dash, width: what Fig. 6 draws per net
    ("train_error", "train", "dash", 1.5),
    ("clean_train_error", "clean train", "dot", 2.0),
    ("test_error", "test", "solid", 3.5),
)
CURVE_WORDS = (("train_error", "training", "dashed"), ("clean_train_error", "clean training", "dotted"),
               ("test_error", "test", "bold"))  # the title names the curves drawn
CURVE_MODES = {  # what each curve measured, said for the curves drawn
    "train_error": "train: running mini-batch error, train mode, augmented batches",
    "clean_train_error": "clean train: eval mode, un-augmented fixed training subset",
    "test_error": "test: eval mode, the held-out split",
}


def final_errors(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run: arch, depth, norm, seed, label, train and test error in %. Training error is the last
    logged interval's; test error the last evaluation's (NaN when never evaluated)."""
    finals = []
    for run, g in by_run(rows):
        g = g.sort_values("step", kind="stable")
        tested = g["test_error"].to_numpy(np.float64)
        tested = tested[~np.isnan(tested)]
        finals.append((run.arch, run.depth, run.norm, run.seed, run.label, 100 * float(g["train_error"].iloc[-1]),
                       100 * tested[-1] if len(tested) else np.nan))
    return pd.DataFrame(finals, columns=["arch", "depth", "norm", "seed", "label", "train", "test"])


def seed_groups(rows: pd.DataFrame) -> list[tuple[str, str, list[pd.DataFrame]]]:
    """(label, colour, per-seed frames) of each net: runs that differ only in their seed (and the "-s<seed>" end
    of their run ids), in drawing order. Variants the metadata cannot tell apart stay apart (their run ids)."""
    groups: dict[tuple, list] = {}
    for run, g in by_run(rows):
        key = (run.arch, run.depth, run.norm, run.shortcut, re.sub(r"-s\d+$", "", run.run_id))
        groups.setdefault(key, []).append((run, g))
    out = []
    for (arch, depth, norm, shortcut, _), members in groups.items():
        run = members[0][0]
        label = re.sub(r" \(seed=\d+\)|, seed=\d+", "", run.label)
        own = run.color != run_color(arch, depth, norm, shortcut, run.seed)  # a variant's colour (selection)
        out.append((label, run.color if own else run_color(arch, depth, norm, shortcut), [g for _, g in members]))
    return out


def seed_band(members: list[pd.DataFrame], column: str) -> pd.DataFrame:
    """Per step over seeds: mean, min, max and n of `column` (in %), rows where no seed has a value dropped."""
    wide = pd.concat([g.groupby("step")[column].last().rename(i) for i, g in enumerate(members)], axis=1)
    wide = 100 * wide.sort_index().dropna(how="all")
    return pd.DataFrame({"mean": wide.mean(axis=1), "lo": wide.min(axis=1), "hi": wide.max(axis=1),
                         "n": wide.count(axis=1)})


def _rgba(color: str, alpha: float) -> str:
    return color.replace("rgb(", "rgba(").replace(")", f", {alpha})") if color.startswith("rgb(") else color


def _band_traces(x, lo, hi, color: str, group: str) -> list[go.Scatter]:
    """A min–max band between two invisible edges (drawn under the mean line, no legend entry)."""
    edge = dict(mode="lines", line=dict(width=0, color=_rgba(color, 0)), legendgroup=group, showlegend=False,
                hoverinfo="skip")
    return [go.Scatter(x=x, y=hi, **edge),
            go.Scatter(x=x, y=lo, fill="tonexty", fillcolor=_rgba(color, 0.18), **edge)]


def plot_training_curves(
    metrics: pd.DataFrame, *, step: int | None = None, runs=None, arch=None, depth=None,
) -> go.Figure:
    """He et al. Fig. 6: training error dashed, clean training error dotted (when measured), test error bold,
    against iterations, one colour per net. Several seeds of a net: their mean and a min–max band.

    `step` draws a vertical line there. Values are drawn where measured (NaN rows skipped)."""
    rows = training_rows(metrics, ("step", "train_error", "test_error"), METRICS_HINT,
                         runs=runs, arch=arch, depth=depth)
    fig = go.Figure()
    seeds, drawn = 1, set()
    for label, color, members in seed_groups(rows):
        seeds = max(seeds, len(members))
        for column, suffix, dash, width in CURVES:
            if column not in rows.columns:
                continue
            band = seed_band(members, column)
            if band.empty:
                continue  # no legend entry for a curve that draws nothing
            drawn.add(column)
            x = band.index.to_numpy()
            if len(members) > 1:
                fig.add_traces(_band_traces(x, band["lo"], band["hi"], color, label))
            fig.add_trace(go.Scatter(
                x=x, y=band["mean"], mode="lines", name=f"{label} {suffix}", legendgroup=label,
                line=dict(color=color, dash=dash, width=width), customdata=band["n"],
                hovertemplate="%{x} iterations<br>%{y:.2f} % (mean of %{customdata} seed(s))"
                              "<extra>%{fullData.name}</extra>"))
    if step is not None:
        fig.add_vline(x=step, line=dict(color="#888", dash="dot", width=1))
    names = [f"{word} ({look})" for column, word, look in CURVE_WORDS if column in drawn] or ["training and test"]
    title = (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]) + " error"
    title = title[0].upper() + title[1:]
    if arch is not None:  # figures of one family each get their own title (and export name)
        title = f"{', '.join(arch_name(a) for a in ([arch] if isinstance(arch, str) else arch))} nets: {title[0].lower()}{title[1:]}"
    fig = base_layout(fig, title, STEP_AXIS, "error (%)", False)
    agg = f"Each net: the mean over {count_text(seeds, 'seed')}, band from min to max." if seeds > 1 else \
        "One seed per net."
    modes = "; ".join(text for column, text in CURVE_MODES.items() if column in drawn)
    return add_caption(fig, f"{modes[0].upper()}{modes[1:]}.<br>{agg}" if modes else agg)


def _paper_traces(fig: go.Figure) -> None:
    """Each source's ResNet test errors as printed, every point's hover saying what kind of number it is; He et
    al.'s ResNet-110 also as the mean ± std of its 5 runs (the printed 6.43 % is the best of them)."""
    for source, points in reference.PUBLISHED.items():
        color, symbol = PAPER_STYLE[source]
        fig.add_trace(go.Scatter(
            x=[p.depth for p in points], y=[p.error for p in points], mode="lines+markers",
            name=f"{source}: ResNet test error, {reference.DATA}", legendgroup="paper",
            line=dict(color=color, width=1, dash="dot"), marker=dict(symbol=symbol, size=8),
            customdata=[p.label for p in points], hovertemplate="%{customdata}<extra>" + source + "</extra>"))
        for p in points:
            if p.mean is not None:
                fig.add_trace(go.Scatter(
                    x=[p.depth], y=[p.mean], mode="markers", legendgroup="paper",
                    name=f"{source}: ResNet-{p.depth} mean ± std of {p.runs} runs",
                    marker=dict(symbol="circle-open", size=9, color=color),
                    error_y=dict(type="constant", value=p.std, thickness=1, color=color),
                    hovertemplate=f"ResNet-{p.depth}: mean {p.mean:.2f} ± {p.std:.2f} % over {p.runs} runs "
                                  f"(best {p.error:.2f} %)<extra>{source}</extra>"))


def plot_error_vs_depth(metrics: pd.DataFrame, *, runs=None, arch=None, depth=None,
                        paper: bool | None = None) -> go.Figure:
    """He et al.'s degradation at a glance: each run's final training (dashed) and test (bold) error
    against depth, one line per architecture: the mean over seeds, each seed a small point. Training error is
    the last logged interval's; test error the last evaluation's. `paper` (default: when every run is a
    BatchNorm CIFAR net) overlays the published CIFAR-10 ResNet test errors (He et al. Table 6, akamaster),
    labelled with their data set."""
    rows = training_rows(metrics, ("step", "train_error", "test_error", "arch", "depth"), METRICS_HINT,
                         runs=runs, arch=arch, depth=depth)
    rows = rows[(rows["depth"] > 0).to_numpy()]
    if rows.empty:
        raise ValueError("error against depth needs runs of known depth (resviz's 6n+2 nets); these runs have none")
    paper = facts(rows).bn_cifar if paper is None else paper
    table = final_errors(rows)
    fig = go.Figure()
    for a in sorted(pd.unique(table["arch"]), key=arch_rank):
        t = table[table["arch"] == a]
        agg = t.groupby("depth", sort=True).agg(train=("train", "mean"), test=("test", "mean"),
                                                n=("label", "size")).reset_index()
        color = run_color(a, int(np.median(agg["depth"])))
        hov = "depth %{x}<br>%{y:.2f} % (mean of %{customdata} seed(s))<extra>%{fullData.name}</extra>"
        for col, suffix, dash, width in (("train", "train", "dash", 1.5), ("test", "test", None, 3.5)):
            if agg[col].notna().any():
                fig.add_trace(go.Scatter(x=agg["depth"], y=agg[col], mode="lines+markers",
                                         name=f"{arch_name(a)} {suffix}", legendgroup=a,
                                         line=dict(color=color, dash=dash, width=width), customdata=agg["n"],
                                         hovertemplate=hov))
                if (agg["n"] > 1).any():  # every seed as a point
                    fig.add_trace(go.Scatter(x=t["depth"], y=t[col], mode="markers", legendgroup=a,
                                             showlegend=False, marker=dict(color=color, size=5, opacity=0.6),
                                             name=f"{arch_name(a)} {suffix} per seed", customdata=t["seed"],
                                             hovertemplate="depth %{x}, seed %{customdata}: %{y:.2f} %"
                                                           "<extra></extra>"))
    depths = sorted(set(map(int, pd.unique(table["depth"]))))
    if paper:
        _paper_traces(fig)
        depths = sorted(set(depths) | {p.depth for ps in reference.PUBLISHED.values() for p in ps})
    fig.update_xaxes(type="log", tickvals=depths, ticktext=[str(d) for d in depths])
    fig = base_layout(fig, "Final training (dashed) and test (bold) error against depth", "depth (layers)",
                      "error (%)", False)
    seeds = int(table.groupby(["arch", "depth"]).size().max())
    runs_line = (f"Each point: the mean over {count_text(seeds, 'seed')}, a dot per seed." if seeds > 1
                 else "One seed per net.")
    note = (f"{runs_line} Train = running mini-batch error, test = eval mode on the test split."
            + ("<br>Grey: published ResNet test errors on the CIFAR-10 test set, not these runs' data; He et al.'s "
               "ResNet-110 point is the best of 5 runs (open circle: their mean ± std)." if paper else ""))
    return add_caption(fig.update_layout(legend=dict(title=dict(text="architecture"))), note)
