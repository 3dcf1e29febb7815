"""The Recorder's arithmetic: per-channel moments on the device, and the table's statistics derived from them.

`write_moments` runs inside a hook: x (N, C, *) -> per-channel first and second moments in fp32, written into
a slice of the staging vector. CUDA uses `torch.var_mean` (one pass); the CPU uses fp32 sums of x and x^2 per
(sample, channel) row, because CPU `var_mean` is 15-50x slower; its variance then carries a relative error of
about 1e-7 * (mean/std)^2 per channel (1e-4 for a channel whose |mean| is 30 std). The two CPU passes (a sum,
a norm) read x twice; no eager CPU op measured does it faster (ResNet-56 tensors, batch 64, one thread, per
tensor: var_mean per channel 14-44x slower, a stacked (x, x*x) reduction 2-22x, vecdot / einsum / bmm for the
squares no faster); the reductions take about 4 % of a training step there (torch.profiler).

`derive` runs on the host, in float64, once per flush: staging rows -> the values of the plan's catalog.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from resviz.probes.plan import Plan

SENTINEL = -1.0  # a norm or a count is never negative: marks a slot nobody wrote this step


def write_moments(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, central: bool,
                  last: bool = False) -> None:
    """Per-channel moments of x (N, C, *), or of x (..., C) when `last` (token features), in fp32 into
    first/second (C,): mean and biased variance when `central` (one-pass var_mean, for CUDA), else sum of x and
    sum of x^2 (fast on the CPU)."""
    if central:
        xf = x if x.dtype == torch.float32 else x.float()
        dims = list(range(x.dim() - 1)) if last else [0, *range(2, x.dim())]
        var, mean = torch.var_mean(xf, dim=dims, correction=0)  # (C,), (C,)
        first.copy_(mean)
        second.copy_(var)
        return
    if last:  # (M, C) rows of features: reduce over the rows
        xv = x.reshape(-1, x.shape[-1])
        torch.sum(xv, 0, dtype=torch.float32, out=first)
        torch.linalg.vector_norm(xv, dim=0, dtype=torch.float32, out=second)
        second.square_()
        return
    n, c = x.shape[0], x.shape[1]
    xv = x.reshape(n, c, -1)  # (N, C, L): a view when x is contiguous
    torch.sum(xv.sum(2, dtype=torch.float32), 0, out=first)  # (N, C) -> (C,)
    torch.sum(torch.linalg.vector_norm(xv, dim=2, dtype=torch.float32).square(), 0, out=second)


def _range_sums(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sums of the columns [lo_k, hi_k) of v (R, Ctot) for each k (lo_k < hi_k) -> (R, K); each sum is taken over
    its own columns only (no running totals, so a range of zeros sums to exactly 0)."""
    if not len(lo):
        return np.zeros((v.shape[0], 0))
    padded = np.concatenate([v, np.zeros((v.shape[0], 1))], axis=1)  # (R, Ctot + 1): hi_k may be Ctot
    return np.add.reduceat(padded, np.stack([lo, hi], axis=1).reshape(-1), axis=1)[:, ::2]


def _site_stats(raw: np.ndarray, plan: Plan, central: bool) -> dict[str, np.ndarray]:
    """Per site (R, S): std (over the site's signal channels), csm, cvar (over all its channels), count; per
    channel column (R, Ctot): chstd and sq (the sum of squares); `starts` (S,), the site's first column."""
    sites = plan.sites
    chans = np.array([s.channels for s in sites], dtype=np.int64)
    counts = raw[:, [s.offset + 2 * s.channels for s in sites]]  # (R, S) elements per channel, -1 if unwritten
    owner = np.repeat(np.arange(len(sites)), chans)  # (Ctot,) site of each channel column
    starts = np.concatenate([[0], np.cumsum(chans)[:-1]]).astype(np.int64)
    signal = np.array([s.signal_range for s in sites], dtype=np.int64).reshape(-1, 2)  # (S, 2) [lo, hi)
    lo, hi = starts + signal[:, 0], starts + signal[:, 1]
    first_cols = np.concatenate([np.arange(s.offset, s.offset + s.channels) for s in sites] or [np.zeros(0, int)])
    a = raw[:, first_cols]  # (R, Ctot)
    b = raw[:, first_cols + np.repeat(chans, chans)]
    n = counts[:, owner]  # (R, Ctot) elements per channel
    out = {"count": counts, "starts": starts}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if central:
            mean, var = a, b
            out["sq"] = n * (var + mean**2)
        else:
            mean = a / n
            var = np.maximum(b / n - mean**2, 0.0)
            out["sq"] = b
        if not len(sites):
            empty = np.zeros((raw.shape[0], 0))
            return {**out, "std": empty, "csm": empty, "cvar": empty, "chstd": empty}
        whole = lambda v: _range_sums(v, starts, starts + chans) / chans  # noqa: E731  (R, Ctot) -> (R, S)
        out["csm"] = whole(mean**2)
        out["cvar"] = whole(var)
        width = hi - lo
        sig = lambda v: _range_sums(v, lo, hi) / width  # noqa: E731  over the signal channels
        sig_mean = sig(mean)
        pooled_var = sig(var) + sig((mean - sig_mean[:, owner]) ** 2)  # biased, over N*C'*H*W
        total = counts * width  # (R, S)
        out["std"] = np.sqrt(pooled_var * total / (total - 1))
        out["chstd"] = np.sqrt(var * n / (n - 1))
    return out


def _ratio(stats: dict[str, np.ndarray], plan: Plan, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """||site a|| / ||site b||, both over site b's signal channels (the same channel positions: a block's branch
    and skip have the same width) -> (R, K)."""
    signal = np.array([s.signal_range for s in plan.sites], dtype=np.int64).reshape(-1, 2)
    starts = stats["starts"]
    lo, hi = signal[ib, 0], signal[ib, 1]
    num = _range_sums(stats["sq"], starts[ia] + lo, starts[ia] + hi)
    den = _range_sums(stats["sq"], starts[ib] + lo, starts[ib] + hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(num / den)


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
    values[:, sel] = _ratio(stats, plan, ia[sel], ib[sel])
    valid[:, sel] = site_ok[:, ia[sel]] & site_ok[:, ib[sel]]
    sel = src == "chstd"
    values[:, sel] = stats["chstd"][:, stats["starts"][ia[sel]] + ib[sel]]
    valid[:, sel] = site_ok[:, ia[sel]]
    sel = src == "scalar"
    values[:, sel] = raw[:, ia[sel]]
    valid[:, sel] = raw[:, ia[sel]] != SENTINEL
    return values, valid
