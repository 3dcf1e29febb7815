"""Shattered gradients (Balduzzi et al. 2017): how alike are the input gradients of nearby inputs?

Two settings, each labelled in its frames' `setting` column:

SETTING_1D, the paper's own experiment: a fully connected net with one input and one output, the input swept
over 256 evenly spaced points of [-2, 2], the gradient d out / d x (a scalar) at each point, its
autocorrelation function over lags and its covariance over random initialisations; plain and residual nets,
with and without BN, against depth (`fc_net`, `gradients_1d`, `autocorrelation_1d`, `shattering_1d_vs_depth`,
`gradients_1d_frame`, `covariance_1d`).

SETTING_IMAGE, resviz's adaptation to the CIFAR conv nets (below): inputs lie on a line segment in image space,
x_j = a + t_j (b - a), t_j = j / (n - 1), with a, b standard Gaussian images by default. The scalar output is
a fixed random unit projection of the logits (or one logit). For each input the gradient g_j = d out / d x_j
(a whole image) is taken; inputs i, j are compared by the cosine similarity of g_i and g_j (uncentred: no mean
is subtracted, so this is not a correlation coefficient nor a covariance), and `cosine_lag1` is its mean over
pairs one step apart (the "uncentred mean cosine similarity" at lag 1).
Balduzzi et al.: in deep feed-forward nets the gradients decorrelate ("white noise"), with skips they do not.

BatchNorm, two ways (the 1-D frames' `bn_mode` column): BN_CALIBRATED, eval mode with the statistics
*calibrated* on the line batch itself (one train-mode pass with cumulative averaging sets the running mean/var
to the batch's statistics; the default init stats 0/1 would make a BN net an unnormalised one): each input's
gradient is that of one fixed function, forward values equal train mode's, and the coupling through the batch
statistics is left out. BN_TRAIN (1-D only): train mode, d out_i / d x_i with the statistics functions of all
inputs, the diagonal of the batch's Jacobian. The image-space functions use BN_CALIBRATED. Everything is
restored on exit.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz.modes import batch_stats_mode, calibrated_eval  # calibrated_eval also re-exported here (its old home)
from resviz.models import cifar_resnet

SETTING_1D = "1-D input on [-2, 2], fully connected nets (Balduzzi et al. 2017's experiment)"
SETTING_IMAGE = "line between two images, CIFAR conv nets (resviz's adaptation)"


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
    correlation: np.ndarray  # (n, n) cosine similarity of g_i and g_j (uncentred, not a covariance)
    lags: np.ndarray  # (L,) 1..max_lag
    autocorrelation: np.ndarray  # (L,) mean cosine similarity of pairs `lag` apart (uncentred)

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

    Rows: setting (SETTING_IMAGE), arch, norm, depth, seed, cosine_lag1 and cosine_lag8 (the mean cosine
    similarity of input gradients 1 and 8 steps apart on the line; uncentred), mean_cosine (over all pairs i != j).
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
                            setting=SETTING_IMAGE,
                            arch=arch,
                            norm=norm,
                            depth=depth,
                            seed=s,
                            cosine_lag1=gc.lag1,
                            cosine_lag8=float(gc.autocorrelation[-1]),
                            mean_cosine=float(off),
                        )
                    )
    return pd.DataFrame(rows)


def shattering_table(frame: pd.DataFrame, value: str = "cosine_lag1") -> pd.DataFrame:
    """(arch, norm) rows x depth columns of `value` (a column of `shattering_vs_depth`), averaged over seeds."""
    if value not in frame.columns:
        raise ValueError(
            f"value={value!r} is not a column; use cosine_lag1, cosine_lag8 or mean_cosine")
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
    """Cosine similarities of the input gradients along one line for each (arch, norm) net of one depth at
    initialisation, keyed by a label such as "plain-56, BN" or "ResNet-56, no norm" (in archs x norms order): the
    image-space counterpart of Balduzzi et al.'s covariance matrices (uncentred cosines, not covariances)."""
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


# ---- Balduzzi et al.'s 1-D experiment -------------------------------------------------------------------


class FCNet(nn.Module):
    """A fully connected net R -> R with `depth` ReLU layers of `width` units, in float64.

    plain:    h <- relu(N(W h + b)), `depth` times (the first W is 1 x width), then out = w . h + b
    residual: h <- W_in x + b_in, then `depth` blocks h <- h + W relu(N(h)) + b (Balduzzi et al.'s one-layer
              skip block), then out = w . h + b
    N is a BatchNorm1d (norm="batch") or nothing (norm="none"). Weights: He normal (fan-in, gain √2); biases:
    PyTorch's default U(±1/√fan_in), so the first layer's kinks spread over the input range (without biases a
    ReLU net of a scalar input is linear on each side of 0 and nothing shatters).
    """

    def __init__(self, depth: int, *, residual: bool, norm: str = "batch", width: int = 200):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth={depth!r} must be an integer >= 1 (ReLU layers), e.g. 1, 2, 4, 8, 16, 24, 50")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm={norm!r} is unknown for the 1-D nets; use 'batch' or 'none'")
        self.residual, self.depth, self.norm = residual, depth, norm
        self.inp = nn.Linear(1, width) if residual else None
        fan_ins = [width] * depth if residual else [1] + [width] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(f, width) for f in fan_ins)
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) if norm == "batch" else nn.Identity() for _ in fan_ins)
        self.out = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, 1) -> (n, 1)
        if not self.residual:
            h = x
            for layer, norm in zip(self.layers, self.norms):
                h = torch.relu(norm(layer(h)))
            return self.out(h)
        h = self.inp(x)  # (n, width)
        for layer, norm in zip(self.layers, self.norms):
            h = h + layer(torch.relu(norm(h)))
        return self.out(h)


def fc_net(depth: int, *, arch: str = "plain", norm: str = "batch", width: int = 200, seed: int = 0) -> FCNet:
    """`FCNet` of `depth` ReLU layers, initialised from `seed` (arch "plain" or "resnet")."""
    if arch not in ("plain", "resnet"):
        raise ValueError(f"arch={arch!r} is unknown; use 'plain' or 'resnet'")
    torch.manual_seed(seed)
    return FCNet(depth, residual=arch == "resnet", norm=norm, width=width)


def line_1d(n: int = 256, low: float = -2.0, high: float = 2.0) -> torch.Tensor:
    """n evenly spaced scalar inputs on [low, high]: (n, 1) float64 (Balduzzi et al.: 256 points on [-2, 2])."""
    if n < 2:
        raise ValueError(f"n={n} points cannot make a line; use n >= 2 (e.g. 256)")
    return torch.linspace(low, high, n, dtype=torch.float64)[:, None]


# How a BN net's per-point derivative d out_i / d x_i is taken (the `bn_mode` column of the 1-D frames):
BN_CALIBRATED = "calibrated eval"  # eval mode, running statistics set to the line's own batch statistics: the
#   derivative with the statistics held fixed (one fixed function of x; forward values equal train mode's)
BN_TRAIN = "train, per point"  # train mode: the statistics are functions of all 256 inputs, so d out_i / d x_i
#   is the diagonal of the batch's Jacobian (what a point's own derivative is while the net trains)
NO_BN = "no BN"  # nets without BatchNorm: one derivative, both ways the same
BN_MODES_1D = (BN_CALIBRATED, BN_TRAIN)


def gradients_1d(model: nn.Module, x: torch.Tensor, bn_mode: str = BN_CALIBRATED) -> np.ndarray:
    """d out_i / d x_i at every point of x (n, 1) -> (n,), with BatchNorm as `bn_mode` says (BN_CALIBRATED or
    BN_TRAIN, see above; the same for nets without BN). The net, its running statistics included, is restored."""
    if bn_mode not in BN_MODES_1D:
        raise ValueError(f"bn_mode={bn_mode!r} is unknown; use {BN_CALIBRATED!r} or {BN_TRAIN!r}")
    x = x.detach().to(torch.float64)
    if bn_mode == BN_TRAIN and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        with batch_stats_mode(model):
            jac = torch.autograd.functional.jacobian(lambda inp: model(inp)[:, 0], x, vectorize=True)  # (n, n, 1)
        return torch.diagonal(jac[:, :, 0]).numpy()
    x.requires_grad_(True)
    with calibrated_eval(model, x.detach()):
        (grad,) = torch.autograd.grad(model(x).sum(), x)  # rows independent in eval mode
    return grad[:, 0].numpy()


def autocorrelation_1d(g: np.ndarray, max_lag: int = 16) -> np.ndarray:
    """The autocorrelation function of a series g (n,) at lags 0..max_lag: A(k) = Σ_i (g_i − ḡ)(g_{i+k} − ḡ) /
    Σ_i (g_i − ḡ)² (so A(0) = 1; white noise ≈ 0 at k ≥ 1, brown noise ≈ 1 at small k)."""
    g = np.asarray(g, dtype=np.float64)
    if max_lag >= len(g):
        raise ValueError(f"max_lag={max_lag} must be below the {len(g)} points; use e.g. max_lag={len(g) // 4}")
    d = g - g.mean()
    denom = float(d @ d)
    return np.array([float(d[: len(d) - k] @ d[k:]) / denom for k in range(max_lag + 1)])


def _nets_1d(depths, archs, norms, seeds: int, seed: int, width: int, bn_modes=(BN_CALIBRATED,)):
    """(arch, norm, depth, seed, bn_mode, net): BN nets once per bn_mode, the others once (bn_mode NO_BN)."""
    for arch in archs:
        for norm in norms:
            for depth in depths:
                for s in range(seed, seed + seeds):
                    net = fc_net(depth, arch=arch, norm=norm, width=width, seed=s)
                    for mode in (bn_modes if norm == "batch" else (NO_BN,)):
                        yield arch, norm, depth, s, mode, net


def _derivative(net, x, mode: str) -> np.ndarray:
    return gradients_1d(net, x, BN_CALIBRATED if mode == NO_BN else mode)


def shattering_1d_vs_depth(
    depths: Sequence[int] = (1, 2, 4, 8, 16, 24, 50),
    archs: Sequence[str] = ("plain", "resnet"),
    norms: Sequence[str] = ("batch", "none"),
    seeds: int = 4,
    seed: int = 0,
    *,
    width: int = 200,
    n_inputs: int = 256,
    max_lag: int = 16,
    bn_modes: Sequence[str] = (BN_CALIBRATED,),
) -> pd.DataFrame:
    """The autocorrelation function of d out / d x along [-2, 2] for every (arch, norm, depth, seed) at init, BN
    nets once per `bn_modes` entry (BN_CALIBRATED, BN_TRAIN). Tidy rows: setting (SETTING_1D), arch, norm, bn_mode,
    depth, seed, lag (0..max_lag), autocorrelation."""
    x = line_1d(n_inputs)
    rows = []
    for arch, norm, depth, s, mode, net in _nets_1d(depths, archs, norms, seeds, seed, width, bn_modes):
        acf = autocorrelation_1d(_derivative(net, x, mode), max_lag)
        rows += [dict(setting=SETTING_1D, arch=arch, norm=norm, bn_mode=mode, depth=depth, seed=s, lag=k,
                      autocorrelation=a) for k, a in enumerate(acf)]
    return pd.DataFrame(rows)


def gradients_1d_frame(
    depths: Sequence[int] = (1, 24, 50),
    archs: Sequence[str] = ("plain", "resnet"),
    norms: Sequence[str] = ("batch",),
    seeds: int = 1,
    seed: int = 0,
    *,
    width: int = 200,
    n_inputs: int = 256,
    bn_modes: Sequence[str] = (BN_CALIBRATED,),
) -> pd.DataFrame:
    """The gradients themselves (Balduzzi et al.'s Fig. 1: d out / d x against x): tidy rows setting, arch, norm,
    bn_mode, depth, seed, x, gradient."""
    x = line_1d(n_inputs)
    frames = []
    for arch, norm, depth, s, mode, net in _nets_1d(depths, archs, norms, seeds, seed, width, bn_modes):
        frames.append(pd.DataFrame(dict(setting=SETTING_1D, arch=arch, norm=norm, bn_mode=mode, depth=depth, seed=s,
                                        x=x[:, 0].numpy(), gradient=_derivative(net, x, mode))))
    return pd.concat(frames, ignore_index=True)


def covariance_1d(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per (arch, norm, depth) of a `gradients_1d_frame` with >= 2 seeds: the (n, n) covariance of the gradients
    at every pair of points over the random initialisations (seeds), keyed by e.g. "plain-24, BN"."""
    out = {}
    if "bn_mode" in frame.columns and frame["bn_mode"].nunique() > 1:
        raise ValueError(f"the frame mixes bn_mode {sorted(pd.unique(frame['bn_mode']))}; pass one of them")
    for (arch, norm, depth), g in frame.groupby(["arch", "norm", "depth"], sort=False):
        grads = g.pivot(index="seed", columns="x", values="gradient").to_numpy()  # (seeds, n)
        if len(grads) < 2:
            raise ValueError(f"{arch}-{depth} has {len(grads)} seed; a covariance over initialisations needs "
                             "gradients_1d_frame(..., seeds=2 or more)")
        shown = {"batch": "BN", "none": "no norm"}[norm]
        out[f"{'ResNet' if arch == 'resnet' else 'plain'}-{depth}, {shown}"] = np.cov(grads, rowvar=False)
    return out


__all__ = [
    "BN_CALIBRATED",
    "BN_MODES_1D",
    "BN_TRAIN",
    "NO_BN",
    "SETTING_1D",
    "SETTING_IMAGE",
    "FCNet",
    "GradientCorrelation",
    "autocorrelation_1d",
    "covariance_1d",
    "fc_net",
    "gradients_1d",
    "gradients_1d_frame",
    "line_1d",
    "shattering_1d_vs_depth",
    "correlation_matrices",
    "calibrated_eval",
    "gradient_correlation",
    "input_gradients",
    "line_inputs",
    "shattering_table",
    "shattering_vs_depth",
]
