"""The stats table pivoted once into per-(run, metric) arrays (steps, layers): the cache behind the dashboard's
sliders (`resviz.widgets`) and the data of the offline report's explorer (`resviz.report`).

A slider move then only picks a row of a `Series` (`Series.profile(step)`), which the figure functions draw like
any profile selected from the table. Pure pandas/numpy: no widget library is imported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from resviz.plots.selection import (
    RUN_COLUMNS,
    STATS_NEEDED,
    Profile,
    Run,
    pooled,
    require_columns,
    run_key,
    run_meta,
    runs_of,
    split_parts,
)


@dataclass(frozen=True)
class Series:
    """One run's values of one metric: every recorded step × every layer (in layer_index order)."""

    run: Run
    metric: str
    steps: np.ndarray  # (S,) int, sorted
    layer_index: np.ndarray  # (L,) int
    layer: np.ndarray  # (L,) str
    values: np.ndarray  # (S, L) float, NaN where a layer was not recorded at a step
    part: str = ""  # see split_parts: "" unless the metric has several rows per layer index
    part_no: int = 0

    def row(self, step: int) -> int:
        """Row of the last recorded step at or before `step` (the first row if none)."""
        return max(int(np.searchsorted(self.steps, step, side="right")) - 1, 0)

    def profile(self, step: int) -> Profile:
        """The depth profile shown for `step` (its last recorded step at or before it)."""
        r = self.row(step)
        return Profile(self.run, int(self.steps[r]), self.layer_index, self.layer, self.values[r],
                             self.part, self.part_no)


def _runs_by_code(stats: pd.DataFrame) -> tuple[np.ndarray, list[Run], list[Run]]:
    """(run code of every row (N,), the Run of each code, the runs in runs_of order)."""
    meta_cols = [c for c in RUN_COLUMNS if c in stats.columns]
    run_code = stats.groupby(meta_cols, observed=True, sort=False).ngroup().to_numpy()  # (N,)
    first_rows = stats.iloc[np.unique(run_code, return_index=True)[1]]
    runs = runs_of(first_rows)
    found = {r.key: r for r in runs}
    meta = run_meta(first_rows)  # row r describes run code r
    return run_code, [found[run_key(m)] for m in meta.itertuples()], runs


def pivot(stats: pd.DataFrame) -> dict[str, list[Series]]:
    """metric -> per-run Series, in runs_of order: one sort of the whole table, then numpy slices."""
    if stats is None or len(stats) == 0:
        return {}
    require_columns(stats, STATS_NEEDED, "stats table", "pass the tidy table from runs.load or Recorder.frame()")
    stats = pooled(stats)
    run_code, run_of, runs = _runs_by_code(stats)
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
        for k, (part, pos) in enumerate(split_parts(li_cols, names)):
            out.setdefault(metric, []).append(
                Series(run, metric, steps, li_cols[pos], names[pos], values[:, pos], part, k))
    rank = {r.key: i for i, r in enumerate(runs)}
    for series in out.values():
        series.sort(key=lambda s: (rank[s.run.key], s.part_no))
    return out
