"""Shattered gradients (Balduzzi et al. 2017): how alike are the input gradients of nearby inputs?

Inputs lie on a line segment in image space, x_j = a + t_j (b - a), t_j = j / (n - 1), with a, b standard
Gaussian images by default. The scalar output is a fixed random unit projection of the logits (or one logit).
For each input the gradient g_j = d out / d x_j (a whole image) is taken; the correlation between inputs i, j
is the cosine similarity of g_i and g_j, and the lag-k autocorrelation is its mean over pairs k steps apart.
Balduzzi et al.: in deep feed-forward nets the gradients decorrelate ("white noise"), with skips they do not.

BatchNorm: each input's gradient must be the gradient of one fixed function, so BN runs in eval mode with its
statistics *calibrated* on the line batch itself (one train-mode pass with cumulative averaging sets the
running mean/var to the batch's statistics; the default init stats 0/1 would make a BN net an unnormalised
one). The forward values equal train mode's; the gradient leaves out the coupling through the batch
statistics. Everything is restored on exit.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz.analysis.modes import calibrated_eval  # also re-exported from here (its old home)
from resviz.models import cifar_resnet


def line_inputs(
    n: int = 256,
    shape: Sequence[int] = (3, 32, 32),
    *,
    start: torch.Tensor | None = None,
    end: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """n points evenly spaced on the segment from `start` to `end` (default: two N(0, 1) images): (n, *shape)."""
    if n < 2:
        raise ValueError(f"n={n} points cannot make a line; use n >= 2 (e.g. 256)")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(tuple(shape), generator=gen) if start is None else torch.as_tensor(start, dtype=torch.float32)
    b = torch.randn(tuple(shape), generator=gen) if end is None else torch.as_tensor(end, dtype=torch.float32)
    if a.shape != b.shape:
        raise ValueError(f"start {tuple(a.shape)} and end {tuple(b.shape)} must have the same shape")
    t = torch.linspace(0.0, 1.0, n).reshape(n, *([1] * a.ndim))  # (n, 1, 1, 1)
    return a + t * (b - a)  # (n, C, H, W)


@dataclass(frozen=True)
class GradientCorrelation:
    """Input gradients along a line and their correlations."""

    gradients: np.ndarray  # (n, D) d out / d x_j, flattened
    correlation: np.ndarray  # (n, n) cosine similarity of g_i and g_j
    lags: np.ndarray  # (L,) 1..max_lag
    autocorrelation: np.ndarray  # (L,) mean correlation of pairs `lag` apart

    @property
    def lag1(self) -> float:
        return float(self.autocorrelation[0])


def input_gradients(model: nn.Module, inputs: torch.Tensor, *, output: str | int = "projection", seed: int = 0):
    """d out_j / d x_j for every input (n, *shape) -> (n, D), BN calibrated on the inputs (see module doc)."""
    device = next(model.parameters()).device
    x = inputs.to(device).detach().requires_grad_(True)
    with calibrated_eval(model, x.detach()):
        logits = model(x)  # (n, K)
        if output == "projection":
            gen = torch.Generator().manual_seed(seed)
            u = torch.randn(logits.shape[1], generator=gen).to(device)
            scalar = logits @ (u / u.norm())  # (n,)
        elif isinstance(output, int) and 0 <= output < logits.shape[1]:
            scalar = logits[:, output]
        else:
            raise ValueError(f"output={output!r} must be 'projection' or a logit index 0..{logits.shape[1] - 1}")
        (grad,) = torch.autograd.grad(scalar.sum(), x)  # rows independent in eval mode
    return grad.reshape(len(x), -1)  # (n, D)


def gradient_correlation(
    model: nn.Module,
    line: torch.Tensor,
    *,
    output: str | int = "projection",
    seed: int = 0,
    max_lag: int = 16,
) -> GradientCorrelation:
    """Gradients of a scalar output along `line` (n, C, H, W), their cosine-similarity matrix and lags."""
    g = input_gradients(model, line, output=output, seed=seed).double()  # (n, D)
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
    corr = (unit @ unit.T).cpu().numpy()  # (n, n)
    n = len(corr)
    lags = np.arange(1, min(max_lag, n - 1) + 1)
    auto = np.array([np.diagonal(corr, k).mean() for k in lags])
    return GradientCorrelation(g.cpu().numpy(), corr, lags, auto)


def shattering_vs_depth(
    depths: Sequence[int] = (8, 14, 20, 32, 56),
    archs: Sequence[str] = ("plain", "resnet"),
    norms: Sequence[str] = ("batch", "none"),
    seed: int = 0,
    *,
    seeds: int = 1,
    width: int = 16,
    n_inputs: int = 256,
    image_size: int = 32,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Gradient correlation at initialisation for every (arch, norm, depth), averaged over `seeds` nets.

    Rows: arch, norm, depth, seed, autocorrelation (lag 1), autocorrelation_lag8, mean_correlation
    (mean over all pairs i != j on the line).
    """
    bad = [a for a in archs if a not in ("plain", "resnet")]
    if bad:
        raise ValueError(f"arch={bad[0]!r} is unknown; use 'plain' or 'resnet'")
    line = line_inputs(n_inputs, (3, image_size, image_size), seed=seed)
    rows = []
    for arch in archs:
        for norm in norms:
            for depth in depths:
                for s in range(seed, seed + seeds):
                    torch.manual_seed(s)
                    model = cifar_resnet(depth, plain=arch == "plain", norm=norm, width=width).to(device)
                    gc = gradient_correlation(model, line, seed=s, max_lag=8)
                    n = len(gc.correlation)
                    off = (gc.correlation.sum() - np.trace(gc.correlation)) / (n * (n - 1))
                    rows.append(
                        dict(
                            arch=arch,
                            norm=norm,
                            depth=depth,
                            seed=s,
                            autocorrelation=gc.lag1,
                            autocorrelation_lag8=float(gc.autocorrelation[-1]),
                            mean_correlation=float(off),
                        )
                    )
    return pd.DataFrame(rows)


def shattering_table(frame: pd.DataFrame, value: str = "autocorrelation") -> pd.DataFrame:
    """(arch, norm) rows x depth columns of `value` (a column of `shattering_vs_depth`), averaged over seeds."""
    if value not in frame.columns:
        raise ValueError(
            f"value={value!r} is not a column; use autocorrelation, autocorrelation_lag8 or mean_correlation")
    return frame.pivot_table(index=["arch", "norm"], columns="depth", values=value, aggfunc="mean")


def correlation_matrices(
    depth: int,
    archs: Sequence[str] = ("plain", "resnet"),
    norms: Sequence[str] = ("batch", "none"),
    seed: int = 0,
    *,
    width: int = 16,
    n_inputs: int = 256,
    image_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict[str, GradientCorrelation]:
    """Gradient correlations along one line for each (arch, norm) net of one depth at initialisation,
    keyed by a label such as "plain-56, BN" or "ResNet-56, no norm" (in archs x norms order): Balduzzi et al.'s
    covariance view."""
    bad = [a for a in archs if a not in ("plain", "resnet")]
    if bad:
        raise ValueError(f"arch={bad[0]!r} is unknown; use 'plain' or 'resnet'")
    line = line_inputs(n_inputs, (3, image_size, image_size), seed=seed)
    out = {}
    for arch in archs:
        for norm in norms:
            torch.manual_seed(seed)
            model = cifar_resnet(depth, plain=arch == "plain", norm=norm, width=width).to(device)
            shown = {"batch": "BN", "none": "no norm"}.get(norm, norm)
            label = f"{'ResNet' if arch == 'resnet' else 'plain'}-{depth}, {shown}"
            out[label] = gradient_correlation(model, line, seed=seed)
    return out


__all__ = [
    "GradientCorrelation",
    "correlation_matrices",
    "calibrated_eval",
    "gradient_correlation",
    "input_gradients",
    "line_inputs",
    "shattering_table",
    "shattering_vs_depth",
]
