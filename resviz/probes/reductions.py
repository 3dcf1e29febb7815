"""The Recorder's arithmetic: per-channel moments on the device, and the table's statistics derived from them.

`write_moments` runs inside a hook: x (N, C, *) -> per-channel first and second moments in fp32, written into
a slice of the staging vector. CUDA uses `torch.var_mean` (one pass); the CPU uses fp32 sums of x and x^2 per
(sample, channel) row, because CPU `var_mean` is 15-50x slower; its variance then carries a relative error of
about 1e-7 * (mean/std)^2 per channel (1e-4 for a channel whose |mean| is 30 std).

`derive` runs on the host, in float64, once per flush: staging rows -> the values of the plan's catalog.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from resviz.probes.plan import Plan

SENTINEL = -1.0  # a norm or a count is never negative: marks a slot nobody wrote this step


def write_moments(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, central: bool) -> None:
    """Per-channel moments of x (N, C, *) in fp32 into first/second (C,): mean and biased variance when
    `central` (one-pass var_mean, for CUDA), else sum of x and sum of x^2 (fast on the CPU)."""
    n, c = x.shape[0], x.shape[1]
    if central:
        xf = x if x.dtype == torch.float32 else x.float()
        var, mean = torch.var_mean(xf, dim=[0, *range(2, x.dim())], correction=0)  # (C,), (C,)
        first.copy_(mean)
        second.copy_(var)
        return
    xv = x.reshape(n, c, -1)  # (N, C, L): a view when x is contiguous
    torch.sum(xv.sum(2, dtype=torch.float32), 0, out=first)  # (N, C) -> (C,)
    torch.sum(torch.linalg.vector_norm(xv, dim=2, dtype=torch.float32).square(), 0, out=second)


def _site_stats(raw: np.ndarray, plan: Plan, central: bool) -> dict[str, np.ndarray]:
    """Per site (R, S): std, norm, csm, cvar, count; per channel column (R, Ctot): chstd; and `starts` (S,)."""
    sites = plan.sites
    chans = np.array([s.channels for s in sites], dtype=np.int64)
    counts = raw[:, [s.offset + 2 * s.channels for s in sites]]  # (R, S) elements per channel, -1 if unwritten
    owner = np.repeat(np.arange(len(sites)), chans)  # (Ctot,) site of each channel column
    starts = np.concatenate([[0], np.cumsum(chans)[:-1]]).astype(np.int64)
    first_cols = np.concatenate([np.arange(s.offset, s.offset + s.channels) for s in sites] or [np.zeros(0, int)])
    a = raw[:, first_cols]  # (R, Ctot)
    b = raw[:, first_cols + np.repeat(chans, chans)]
    n = counts[:, owner]  # (R, Ctot) elements per channel
    out = {"count": counts, "starts": starts}
    with np.errstate(divide="ignore", invalid="ignore"):
        if central:
            mean, var = a, b
        else:
            mean = a / n
            var = np.maximum(b / n - mean**2, 0.0)
        if not len(sites):
            empty = np.zeros((raw.shape[0], 0))
            return {**out, "std": empty, "norm": empty, "csm": empty, "cvar": empty, "chstd": empty}
        per_site = lambda v: np.add.reduceat(v, starts, axis=1) / chans  # noqa: E731  (R, Ctot) -> (R, S)
        big_mean = per_site(mean)
        out["csm"] = per_site(mean**2)
        out["cvar"] = per_site(var)
        pooled_var = out["cvar"] + per_site((mean - big_mean[:, owner]) ** 2)  # biased, over N*C*H*W
        total = counts * chans  # (R, S)
        out["std"] = np.sqrt(pooled_var * total / (total - 1))
        out["norm"] = np.sqrt(total * (pooled_var + big_mean**2))
        out["chstd"] = np.sqrt(var * n / (n - 1))
    return out


def derive(raw: np.ndarray, plan: Plan, central: bool) -> tuple[np.ndarray, np.ndarray]:
    """Host side, float64: staging rows (R, size) -> the catalog's values (R, M) and whether each was measured
    in that step (R, M)."""
    r = raw.shape[0]
    stats = _site_stats(raw, plan, central)
    site_ok = stats["count"] > 0
    cat = plan.rows
    values = np.empty((r, len(cat.metric)))
    valid = np.empty((r, len(cat.metric)), dtype=bool)
    src, ia, ib = cat.source, cat.a, cat.b
    for name in ("std", "csm", "cvar"):
        sel = src == name
        values[:, sel] = stats[name][:, ia[sel]]
        valid[:, sel] = site_ok[:, ia[sel]]
    sel = src == "ratio"
    with np.errstate(divide="ignore", invalid="ignore"):
        values[:, sel] = stats["norm"][:, ia[sel]] / stats["norm"][:, ib[sel]]
    valid[:, sel] = site_ok[:, ia[sel]] & site_ok[:, ib[sel]]
    sel = src == "chstd"
    values[:, sel] = stats["chstd"][:, stats["starts"][ia[sel]] + ib[sel]]
    valid[:, sel] = site_ok[:, ia[sel]]
    sel = src == "scalar"
    values[:, sel] = raw[:, ia[sel]]
    valid[:, sel] = raw[:, ia[sel]] != SENTINEL
    return values, valid
