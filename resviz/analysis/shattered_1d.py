"""Balduzzi et al. 2017's 1-D experiment read the way the paper reads it: autocorrelation curves over lags with
intervals over seeds, the measured decay with depth against the rates the paper derives, and what sets the
unnormalised plain net apart. The nets and the measurement are `resviz.analysis.shattered` (SETTING_1D).

The paper's rates: for feedforward rectifier nets the correlation between the gradients at nearby inputs decays
like 2^-L with depth L (white noise); for ResNets with batch norm like L^-1/2. `decay_rates` fits the measured
lag-1 autocorrelation to each form: the per-layer slope of log2(autocorrelation) (the paper: −1) for the
feedforward nets, the exponent of a power law in L (the paper: −0.5) for the ResNets.

Why the unnormalised plain net barely shatters (`kinks_1d`): a ReLU net of one input is piecewise linear, and its
gradient changes only where some unit switches on or off along the line. Without normalisation, after the first
layer each unit's pre-activation is W h + b with h of order |x| and a bias of PyTorch's default U(±1/√width)
(±0.07 at width 200): the layers are nearly positively homogeneous, so most units keep their state along
each side of the line and the gradient is almost the same at neighbouring points. Batch norm re-centres every
unit over the 256 inputs, which puts every unit's switching point inside the input range: many switches per
layer, a gradient that changes at almost every step.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from resviz.analysis.shattered import (BN_CALIBRATED, BN_TRAIN, FCNet, fc_net, gradients_1d_frame, line_1d,
                                       shattering_1d_vs_depth)
from resviz.modes import calibrated_eval

PAPER_RATES = {  # arch -> (the form the paper derives, the rate it implies as `decay_rates` measures it)
    "plain": ("2^-L (feedforward rectifier nets)", -1.0),
    "resnet": ("L^-1/2 (ResNets with batch norm)", -0.5),
}
KEYS = ["arch", "norm", "bn_mode"]
# Balduzzi et al.'s Fig. 1/2 panels: (title, arch, depth) — feedforward depth 1 and 24, ResNet depth 50 (with BN)
PANELS = (("feedforward, depth 1", "plain", 1), ("feedforward, depth 24", "plain", 24),
          ("ResNet, depth 50", "resnet", 50))


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the t interval of the mean of `values` (NaN bounds for fewer than 2 values)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half


def acf_curves(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (arch, norm, bn_mode, depth, lag) of a `shattering_1d_vs_depth` frame: the mean autocorrelation over
    seeds with its `level` t interval (columns mean, lo, hi, n)."""
    missing = set(KEYS + ["depth", "lag", "seed", "autocorrelation"]) - set(frame.columns)
    if missing:
        raise ValueError(f"frame lacks column(s) {sorted(missing)}; pass shattering_1d_vs_depth(...)")
    rows = []
    for key, g in frame.groupby(KEYS + ["depth", "lag"], sort=True):
        mean, lo, hi = t_interval(g["autocorrelation"], level)
        rows.append(dict(zip(KEYS + ["depth", "lag"], key), mean=mean, lo=lo, hi=hi, n=g["seed"].nunique()))
    return pd.DataFrame(rows)


def _fit(arch: str, depths: np.ndarray, lag1: np.ndarray) -> tuple[float, list[int]]:
    """The measured rate and the depths it was fitted on: plain — slope of log2(lag-1) per layer over the depths
    whose mean lag-1 is above 0.1 (below that, seed noise); resnet — exponent of lag-1 ∝ L^k over all depths."""
    keep = lag1 > 0.1
    if keep.sum() < 2:
        return float("nan"), []
    x = depths[keep] if arch == "plain" else np.log(depths[keep])
    y = np.log2(lag1[keep]) if arch == "plain" else np.log(lag1[keep])
    return float(np.polyfit(x, y, 1)[0]), [int(d) for d in depths[keep]]


def decay_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, norm, bn_mode): the paper's form and rate (`PAPER_RATES`; for the feedforward nets with and
    without BN, for the ResNets only with BN), the measured rate (`_fit`) and the depths behind it, and the mean
    lag-1 autocorrelation at each depth."""
    curves = acf_curves(frame[frame["lag"] == 1])
    rows = []
    for (arch, norm, mode), g in curves.groupby(KEYS, sort=True):
        g = g.sort_values("depth")
        rate, used = _fit(arch, g["depth"].to_numpy(float), g["mean"].to_numpy(float))
        form, paper = PAPER_RATES[arch] if arch == "plain" or norm == "batch" else ("—", float("nan"))
        rows.append(dict(arch=arch, norm=norm, bn_mode=mode, paper_form=form, paper_rate=paper, measured_rate=rate,
                         fitted_depths=used, lag1=dict(zip(g["depth"].astype(int), g["mean"].round(4)))))
    return pd.DataFrame(rows)


def relu_inputs(net: FCNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every ReLU of `net` at each point of x (n, 1): a list of `depth` (n, width) tensors, BN as
    `calibrated_eval` sets it (the statistics of x itself)."""
    x = x.detach().to(torch.float64)
    out = []
    with calibrated_eval(net, x), torch.no_grad():
        h = x if not net.residual else net.inp(x)
        for layer, norm in zip(net.layers, net.norms):
            pre = norm(layer(h)) if not net.residual else norm(h)  # (n, width)
            out.append(pre)
            h = torch.relu(pre) if not net.residual else h + layer(torch.relu(pre))
    return out


def kinks_1d(net: FCNet, x: torch.Tensor) -> np.ndarray:
    """Per layer: how many times a unit switches on or off between neighbouring points of x, summed over units
    (the places where the piecewise-linear net's gradient can change)."""
    return np.array([int(((pre[1:] > 0) != (pre[:-1] > 0)).sum()) for pre in relu_inputs(net, x)])


def kinks_table(nets: dict[str, nn.Module], x: torch.Tensor) -> pd.DataFrame:
    """{label: FCNet} -> per net: switches in the first layer, in all later layers, and the share of
    neighbouring pairs of points between which at least one unit of the net switches."""
    rows = []
    for label, net in nets.items():
        pres = relu_inputs(net, x)
        per_layer = kinks_1d(net, x)
        changed = torch.zeros(len(x) - 1, dtype=torch.bool)
        for pre in pres:
            changed |= ((pre[1:] > 0) != (pre[:-1] > 0)).any(1)
        rows.append(dict(net=label, first_layer=int(per_layer[0]), later_layers=int(per_layer[1:].sum()),
                         pairs_with_a_switch=float(changed.double().mean())))
    return pd.DataFrame(rows)


def kinks_vs_norm(depth: int = 50, *, width: int = 200, n_inputs: int = 256, seed: int = 0) -> pd.DataFrame:
    """`kinks_table` of the plain and residual nets of one depth, without and with BN (labels e.g. "plain-50, no
    norm"), on Balduzzi et al.'s line."""
    nets = {f"{arch}-{depth}, {'BN' if norm == 'batch' else 'no norm'}": fc_net(depth, arch=arch, norm=norm,
                                                                                width=width, seed=seed)
            for arch in ("plain", "resnet") for norm in ("none", "batch")}
    return kinks_table(nets, line_1d(n_inputs))


def panel_frames(panels=PANELS, *, seeds: int = 3, width: int = 200, n_inputs: int = 256, max_lag: int = 32,
                 bn_modes=(BN_CALIBRATED, BN_TRAIN)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(acf_curves, gradients) of the nets of `panels` only (each with BN, every bn_mode): what
    `plots.shattered_1d.plot_shattering_panels` draws."""
    curves, grads = [], []
    for _, arch, depth in panels:
        kw = dict(depths=(depth,), archs=(arch,), norms=("batch",), seeds=seeds, width=width, n_inputs=n_inputs,
                  bn_modes=bn_modes)
        curves.append(acf_curves(shattering_1d_vs_depth(max_lag=max_lag, **kw)))
        grads.append(gradients_1d_frame(**kw))
    return pd.concat(curves, ignore_index=True), pd.concat(grads, ignore_index=True)


__all__ = ["PANELS", "PAPER_RATES", "acf_curves", "decay_rates", "kinks_1d", "kinks_table", "kinks_vs_norm",
           "panel_frames", "relu_inputs", "t_interval"]
