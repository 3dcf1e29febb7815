"""Picking what a figure draws from the tidy tables: runs and their metadata, a metric's rows, a step, profiles.

`run_meta(frame)` is the one place that reads a run's metadata columns (with defaults for a frame that lacks
some); `runs_of` turns it into `Run`s in drawing order; `metric_rows` / `profiles` select one metric's pooled
rows and cut them into per-run depth profiles at a step. A selection with no rows raises ValueError naming what
is present, which the dashboard shows as its message.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from resviz.plots.style import arch_rank, label_color, run_color, run_label, run_symbol, short_run_names

RUN_COLUMNS = ("run_id", "arch", "depth", "norm", "shortcut", "seed")
MODEL_COLUMNS = ("model", "family")  # optional: the Recorder writes them
_RUN_DEFAULTS = {"run_id": "", "arch": "unknown", "depth": -1, "norm": "unknown", "shortcut": "unknown", "seed": 0}
STATS_NEEDED = ("metric", "value", "step", "layer", "layer_index")
FILTERS = ("runs", "arch", "depth")


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
    model: str = ""  # the Recorder's model column ("resnet20", "gpt2", "vit_tiny_patch16_224"), "" when absent
    family: str = ""  # the Recorder's family column ("resviz", "timm resnet", "hf gpt2"), "" when absent
    symbol: str = "circle"  # marker symbol (style.run_symbol): plain / residual / each model source apart

    @property
    def key(self) -> tuple:
        return (self.run_id, self.arch, self.depth, self.norm, self.shortcut, self.seed)


def run_meta(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run of `frame` (in order of first appearance), with the columns `RUN_COLUMNS`.

    A column the frame lacks gets its default (run_id "", arch/norm/shortcut "unknown", depth -1, seed 0);
    run_id, arch, norm and shortcut come back as str, depth and seed as int64. ValueError when the frame has
    neither run_id nor arch.
    """
    cols = [c for c in RUN_COLUMNS if c in frame.columns]
    if "run_id" not in cols and "arch" not in cols:
        raise ValueError(f"table has neither run_id nor arch columns; expected {list(RUN_COLUMNS)}")
    uniq = frame[cols].drop_duplicates().astype({c: object for c in cols if c not in ("depth", "seed")})
    for c in RUN_COLUMNS:
        if c not in uniq.columns:
            uniq[c] = _RUN_DEFAULTS[c]
    uniq = uniq[list(RUN_COLUMNS)].astype({"run_id": str, "arch": str, "norm": str, "shortcut": str})
    uniq = uniq.astype({"depth": np.int64, "seed": np.int64}).reset_index(drop=True)
    model_cols = [c for c in MODEL_COLUMNS if c in frame.columns]
    if model_cols:  # the model a run measured (the Recorder's columns): the first value of each run
        first = frame[cols + model_cols].drop_duplicates(cols)
        for c in model_cols:
            uniq[c] = first[c].astype(str).to_numpy()[:len(uniq)] if len(first) == len(uniq) else ""
    return uniq


def run_key(meta_row) -> tuple:
    """`Run.key` of a row of `run_meta` (a namedtuple from itertuples, or a Series)."""
    m = meta_row
    return (m.run_id, m.arch, int(m.depth), m.norm, m.shortcut, int(m.seed))


def runs_of(frame: pd.DataFrame) -> list[Run]:
    """The runs in a frame, plain before ResNet then by depth; labels from `run_label`. Runs whose labels clash
    (variants the metadata does not tell apart: SkipInit / ReZero / Fixup) add the part of their run ids that
    differs ("ResNet-8 (norm=none) fixup") and get that variant's colour (`style.label_color`)."""
    meta = run_meta(frame)
    for c in MODEL_COLUMNS:
        if c not in meta.columns:
            meta[c] = ""
    meta = meta.assign(_o=meta["arch"].map(arch_rank))
    meta = meta.sort_values(["_o", "depth", "norm", "shortcut", "seed", "model", "run_id"], kind="stable")
    rows = list(meta.itertuples(index=False))
    meta["label"] = [run_label(r.arch, r.depth, r.norm, r.shortcut, r.seed, model=r.model, family=r.family)
                     for r in rows]
    meta["color"] = [run_color(r.arch, r.depth, r.norm, r.shortcut, r.seed, model=r.model, family=r.family)
                     for r in rows]
    meta["symbol"] = [run_symbol(r.arch, r.family) for r in rows]
    dup = meta["label"].duplicated(keep=False) & (meta["run_id"] != "")
    for label, ids in meta.loc[dup].groupby("label", sort=False)["run_id"]:
        short = short_run_names(ids)  # the parts of the ids that differ: "fixup", not the whole id
        meta.loc[ids.index, "label"] = [f"{label} {short[i]}" for i in ids]
        meta.loc[ids.index, "color"] = [label_color(short[i]) for i in ids]
    return [
        Run(r.run_id, r.arch, int(r.depth), r.norm, r.shortcut, int(r.seed), r.label, r.color, r.model, r.family,
            r.symbol)
        for r in meta.itertuples(index=False)
    ]


def by_run(rows: pd.DataFrame) -> list[tuple[Run, pd.DataFrame]]:
    """Split rows by run, in `runs_of` order."""
    runs = runs_of(rows)
    found = {r.key: r for r in runs}
    order = {r.key: i for i, r in enumerate(runs)}
    meta_cols = [c for c in RUN_COLUMNS if c in rows.columns]
    out = []
    for _, g in rows.groupby(meta_cols, observed=True, sort=False):
        out.append((found[run_key(run_meta(g.iloc[:1]).iloc[0])], g))
    return sorted(out, key=lambda t: order[t[0].key])


def pick_step(steps: np.ndarray, step: int | None) -> int:
    """The recorded step shown for `step`: the last one at or before it (the first if none), or the last."""
    if step is None:
        return int(steps[-1])
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return int(steps[max(i, 0)])


# ---- checks and filters -------------------------------------------------------------------------------------
def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str, hint: str) -> None:
    """ValueError "<what> is missing column(s) [...]; <hint>" when `frame` lacks any of `columns`."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; {hint}")


def require_rows(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """A lab figure's input check: every column present and at least one row; `what` names the analysis call."""
    require_columns(frame, columns, "table", f"pass {what}")
    if frame.empty:
        raise ValueError(f"the table is empty; pass {what}")


def check_filters(filters: dict) -> dict:
    """The runs= / arch= / depth= keywords of a figure (None when absent); TypeError naming any other keyword."""
    bad = set(filters) - set(FILTERS)
    if bad:
        raise TypeError(f"unknown option(s) {sorted(bad)}; filters are runs=, arch=, depth=")
    return {k: filters.get(k) for k in FILTERS}


def filter_rows(frame: pd.DataFrame, runs=None, arch=None, depth=None) -> pd.DataFrame:
    """Rows of the chosen runs (run ids), architectures and depths; None keeps all."""
    mask = np.ones(len(frame), dtype=bool)
    if runs is not None and "run_id" in frame.columns:
        mask &= frame["run_id"].astype(str).isin([runs] if isinstance(runs, str) else list(runs)).to_numpy()
    if arch is not None and "arch" in frame.columns:
        mask &= frame["arch"].astype(str).isin([arch] if isinstance(arch, str) else list(arch)).to_numpy()
    if depth is not None and "depth" in frame.columns:
        mask &= frame["depth"].isin([depth] if isinstance(depth, (int, np.integer)) else list(depth)).to_numpy()
    return frame[mask]


def describe_filter(runs=None, arch=None, depth=None) -> str:
    parts = [f"{k}={v!r}" for k, v in (("runs", runs), ("arch", arch), ("depth", depth)) if v is not None]
    return f" with {', '.join(parts)}" if parts else ""


def training_rows(metrics: pd.DataFrame, columns: Iterable[str], hint: str, *, runs=None, arch=None, depth=None,
                  empty_hint: str = "the runs have not logged a step yet") -> pd.DataFrame:
    """The chosen runs' rows of a training table (RunSet.metrics); ValueError when a column or every row is missing."""
    require_columns(metrics, columns, "training table", hint)
    rows = filter_rows(metrics, runs, arch, depth)
    if rows.empty:
        raise ValueError(f"no training rows{describe_filter(runs, arch, depth)}; {empty_hint}")
    return rows


def metrics_present(stats: pd.DataFrame) -> list[str] | str:
    present = sorted(map(str, pd.unique(stats["metric"]))) if len(stats) else []
    return present or "none (empty table)"


def pooled(stats: pd.DataFrame) -> pd.DataFrame:
    """The pooled rows of a stats table (channel == -1); all rows when it has no channel column."""
    return stats[(stats["channel"] == -1).to_numpy()] if "channel" in stats.columns else stats


def metric_rows(stats: pd.DataFrame, metric: str, *, runs=None, arch=None, depth=None) -> pd.DataFrame:
    """The pooled rows of one metric for the selected runs; ValueError naming what exists when none."""
    require_columns(stats, STATS_NEEDED, "stats table",
                    "pass the tidy table from runs.load or Recorder.frame()")
    rows = stats[(stats["metric"] == metric).to_numpy()]
    if metric != "response_channel_std":
        rows = pooled(rows)
    rows = filter_rows(rows, runs, arch, depth)
    if rows.empty:
        raise ValueError(
            f"no {metric!r} rows{describe_filter(runs, arch, depth)}; metrics present: {metrics_present(stats)}"
        )
    return rows


def norm_order(values) -> list[str]:
    """Normalisations in reading order: batch, layer, group, none, then any other in order of appearance."""
    order = ["batch", "layer", "group", "none"]
    present = list(dict.fromkeys(map(str, values)))
    return [n for n in order if n in present] + [n for n in present if n not in order]


# ---- depth profiles -----------------------------------------------------------------------------------------
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


def profiles(stats: pd.DataFrame, metric: str, *, step=None, runs=None, arch=None, depth=None) -> list[Profile]:
    """Per-run depth profiles of `metric` at `step` (default: each run's last recorded step)."""
    rows = metric_rows(stats, metric, runs=runs, arch=arch, depth=depth)
    out = []
    for run, g in by_run(rows):
        s = pick_step(np.unique(g["step"].to_numpy()), step)
        at = g[(g["step"] == s).to_numpy()].sort_values("layer_index", kind="stable")
        li, names = at["layer_index"].to_numpy(np.int64), at["layer"].astype(str).to_numpy()
        value = at["value"].to_numpy(np.float64)
        for k, (part, idx) in enumerate(split_parts(li, names)):
            out.append(Profile(run, s, li[idx], names[idx], value[idx], part, k))
    return out


def sorted_view(p: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rank from 1, values descending, layer_index, layer) of Fig. 7's bottom panel; NaN last."""
    order = np.argsort(np.where(np.isnan(p.value), np.inf, -p.value), kind="stable")
    return np.arange(1, len(order) + 1), p.value[order], p.layer_index[order], p.layer[order]
