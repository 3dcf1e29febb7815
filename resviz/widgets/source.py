"""Where a dashboard's tables come from: a run folder or glob, a RunSet, or frames; and a one-line run status."""
from __future__ import annotations

import os

import pandas as pd

from resviz import runs


def load_source(source) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """(stats, training metrics or None, status or None) from a run folder / glob, a RunSet, or frames."""
    if isinstance(source, (str, os.PathLike)):
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


def status_summary(status: pd.DataFrame | None) -> str:
    """e.g. "3 run(s): 2 done, 1 failed (e.g. resnet20-a: CUDA out of memory)"; "" without a status table."""
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
