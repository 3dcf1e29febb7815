"""Normalisation lab: measure Ba et al. 2016's Table 1 instead of copying it.

One fully connected layer on real inputs (scikit-learn's digits, 64 pixels per case, a mini-batch of cases):
summed inputs a = W x (no bias), normalised by each method, then a fixed gain g and bias b:

    h_i = g_i / sigma_i * (a_i - mu_i) + b_i        (Ba et al. Eq. 5, before the non-linearity f)

    batch  mu_i, sigma_i over the cases of the mini-batch, per hidden unit
    weight mu_i = 0, sigma_i = ||w_i||_2
    layer  mu, sigma over the hidden units of one case
    rms    mu = 0, sigma = sqrt(mean_i a_i^2) over the hidden units of one case (Zhang & Sennrich 2019)

Each transformation (Ba et al. Sec. 5.1) is applied, the layer recomputed, and the largest change of h over
all cases and units reported. Invariant means the change is at float64 round-off (relative to max |h|).
Statistics use eps = 0, the paper's algebra; an eps would break exact invariance by ~eps/sigma^2.

    weight_matrix_rescale   W' = delta W                         (one scalar delta > 0)
    weight_matrix_recenter  W' = W + 1 gamma^T                   (the same vector added to every unit's w_i)
    weight_vector_rescale   w_i' = delta_i w_i                   (a different delta_i > 0 per unit)
    dataset_rescale         x_n' = delta x_n for every case n
    dataset_recenter        x_n' = x_n + gamma for every case n
    case_rescale            x_m' = delta x_m for one case m only

`PAPER_TABLE` is the published table, kept for comparison; the measurement never reads it.
Note: Sec. 5.1's prose says *all* methods are invariant to dataset re-scaling, while Table 1 says weight
normalisation is not; the measurement agrees with the table (h scales with delta under weight norm).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz.modes import batch_stats_mode  # also re-exported from here (its old home)
from resviz.analysis.nets import normalise_images

NORMS = ("batch", "weight", "layer", "rms")
TRANSFORMATIONS = (
    "weight_matrix_rescale",
    "weight_matrix_recenter",
    "weight_vector_rescale",
    "dataset_rescale",
    "dataset_recenter",
    "case_rescale",
)

# Ba et al. 2016, Table 1 (True = invariant). Comparison only.
PAPER_TABLE: dict[str, dict[str, bool]] = {
    "batch": dict(zip(TRANSFORMATIONS, (True, False, True, True, True, False))),
    "weight": dict(zip(TRANSFORMATIONS, (True, False, True, False, False, False))),
    "layer": dict(zip(TRANSFORMATIONS, (True, True, False, True, False, True))),
}

Array = np.ndarray
Transform = Callable[[Array, Array, np.random.Generator], tuple[Array, Array]]


def normalise(norm: str, w: Array, x: Array, gain: Array, bias: Array) -> Array:
    """h = gain * (a - mu) / sigma + bias for a = x @ w.T; w (H, D), x (N, D) -> (N, H)."""
    a = x @ w.T  # (N, H)
    if norm == "batch":
        mu, sigma = a.mean(0, keepdims=True), a.std(0, keepdims=True)  # over cases, per unit
    elif norm == "weight":
        mu, sigma = 0.0, np.linalg.norm(w, axis=1)[None, :]  # (1, H)
    elif norm == "layer":
        mu, sigma = a.mean(1, keepdims=True), a.std(1, keepdims=True)  # over units, per case
    elif norm == "rms":
        mu, sigma = 0.0, np.sqrt((a**2).mean(1, keepdims=True))
    else:
        raise ValueError(f"norm={norm!r} is unknown; use one of {', '.join(NORMS)}")
    return gain * (a - mu) / sigma + bias


def _delta(rng: np.random.Generator, size=None) -> Array | float:
    """Positive factors well away from 1: exp(+-U(0.3, 1.5))."""
    magnitude = rng.uniform(0.3, 1.5, size)
    sign = rng.choice([-1.0, 1.0], size)
    return np.exp(sign * magnitude)


def _weight_matrix_rescale(w, x, rng):
    return _delta(rng) * w, x


def _weight_matrix_recenter(w, x, rng):
    gamma = rng.normal(0.0, w.std(), w.shape[1])  # (D,): one vector added to every row
    return w + gamma[None, :], x


def _weight_vector_rescale(w, x, rng):
    return _delta(rng, w.shape[0])[:, None] * w, x


def _dataset_rescale(w, x, rng):
    return w, _delta(rng) * x


def _dataset_recenter(w, x, rng):
    gamma = rng.normal(0.0, x.std(), x.shape[1])  # (D,): the same shift for every case
    return w, x + gamma[None, :]


def _case_rescale(w, x, rng):
    x = x.copy()
    m = rng.integers(x.shape[0])
    x[m] *= _delta(rng)
    return w, x


_TRANSFORMS: dict[str, Transform] = {
    "weight_matrix_rescale": _weight_matrix_rescale,
    "weight_matrix_recenter": _weight_matrix_recenter,
    "weight_vector_rescale": _weight_vector_rescale,
    "dataset_rescale": _dataset_rescale,
    "dataset_recenter": _dataset_recenter,
    "case_rescale": _case_rescale,
}


def _check_names(names: Iterable[str], valid: Sequence[str], what: str) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad[0]!r}; valid: {', '.join(valid)}")
    if not names:
        raise ValueError(f"no {what} given; valid: {', '.join(valid)}")
    return names


def digits_inputs(n: int = 128, seed: int = 0) -> Array:
    """n cases of scikit-learn's 8x8 digits, flattened to 64 float64 pixels (0..16)."""
    from sklearn.datasets import load_digits  # deferred: at the top it adds ~60 % to `resviz --help`'s start-up

    data = load_digits().data.astype(np.float64)  # (1797, 64)
    if not 2 <= n <= len(data):
        raise ValueError(f"n={n} cases must be between 2 and {len(data)} (the digits set's size)")
    idx = np.random.default_rng(seed).choice(len(data), n, replace=False)
    return data[idx]


def measure_invariance(
    norms: Iterable[str] = NORMS,
    transformations: Iterable[str] = TRANSFORMATIONS,
    seed: int = 0,
    *,
    inputs: Array | None = None,
    hidden: int = 32,
    tol: float = 1e-9,
) -> pd.DataFrame:
    """Apply every transformation to one layer under every norm and measure the change of its outputs.

    inputs: (N, D) cases (default: 128 digits). Returns one row per (norm, transformation): `invariant`
    (relative deviation <= tol), `max_deviation` (max |h' - h|), `relative_deviation` (/ max |h|) and
    `paper` (Ba et al.'s entry, None for norms the paper does not list).
    """
    norms = _check_names(norms, NORMS, "norm")
    transformations = _check_names(transformations, TRANSFORMATIONS, "transformation")
    x = digits_inputs(seed=seed) if inputs is None else np.asarray(inputs, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"inputs must be (cases, features) with at least 2 cases, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, np.sqrt(2.0 / x.shape[1]), (hidden, x.shape[1]))  # He init, (H, D)
    gain = rng.uniform(0.5, 2.0, hidden)  # fixed gain and bias, shared by original and transformed
    bias = rng.normal(0.0, 1.0, hidden)
    rows = []
    for t in transformations:
        # one draw of the transformation, the same for every norm
        w2, x2 = _TRANSFORMS[t](w, x, np.random.default_rng([seed, TRANSFORMATIONS.index(t)]))
        for norm in norms:
            h = normalise(norm, w, x, gain, bias)
            h2 = normalise(norm, w2, x2, gain, bias)
            dev = float(np.abs(h2 - h).max())
            rel = dev / float(np.abs(h).max())
            rows.append(
                dict(
                    norm=norm,
                    transformation=t,
                    invariant=bool(rel <= tol),
                    max_deviation=dev,
                    relative_deviation=rel,
                    paper=PAPER_TABLE.get(norm, {}).get(t),
                    transformation_label=TRANSFORMATION_LABELS[t],  # the figure's words come with the data
                    why=THEORY[norm][t][1],
                )
            )
    return pd.DataFrame(rows)


def invariance_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """Norm rows x transformation columns of 'yes'/'no' with the largest deviation, e.g. 'yes (2e-16)'."""
    cells = frame.assign(
        cell=[f"{'yes' if i else 'no'} ({d:.0e})" for i, d in zip(frame["invariant"], frame["max_deviation"])]
    )
    grid = cells.pivot(index="norm", columns="transformation", values="cell")
    rows = [n for n in NORMS if n in grid.index]
    cols = [t for t in TRANSFORMATIONS if t in grid.columns]
    return grid.loc[rows, cols].rename_axis(index="norm", columns=None)


# What the algebra predicts for each cell, and why, in one line (a = W x, h = g (a - mu) / sigma + b).
# `explanation_table` sets these beside the measurement; the tests check that they agree.
THEORY: dict[str, dict[str, tuple[bool, str]]] = {
    "batch": {
        "weight_matrix_rescale": (True, "every aᵢ scales by δ; its batch mean and std scale by the same δ"),
        "weight_matrix_recenter": (False, "aᵢ gains γ·xₙ, which differs between cases; the per-unit batch "
                                          "mean removes only its average over the batch"),
        "weight_vector_rescale": (True, "unit i's aᵢ scales by δᵢ, and so do its own batch mean and std"),
        "dataset_rescale": (True, "every a scales by δ; each unit's batch mean and std scale with it"),
        "dataset_recenter": (True, "aᵢ gains wᵢ·γ, the same for every case: the batch mean removes it"),
        "case_rescale": (False, "one case moves every unit's batch mean and std, so every case's output changes"),
    },
    "weight": {
        "weight_matrix_rescale": (True, "aᵢ and ‖wᵢ‖ both scale by δ"),
        "weight_matrix_recenter": (False, "aᵢ gains γ·xₙ and ‖wᵢ‖ changes; no mean is subtracted"),
        "weight_vector_rescale": (True, "aᵢ and ‖wᵢ‖ both scale by δᵢ"),
        "dataset_rescale": (False, "a scales by δ but ‖wᵢ‖ does not: h − b scales by δ"),
        "dataset_recenter": (False, "aᵢ gains wᵢ·γ and nothing subtracts it (μ = 0)"),
        "case_rescale": (False, "that case's a scales by δ while ‖wᵢ‖ stays: its output scales"),
    },
    "layer": {
        "weight_matrix_rescale": (True, "all units of a case scale by δ; the case's mean and std too"),
        "weight_matrix_recenter": (True, "aᵢ gains γ·xₙ, the same for every unit of case n: the layer mean "
                                         "removes it"),
        "weight_vector_rescale": (False, "units scale by different δᵢ, which changes the pattern across units "
                                         "that the layer mean and std summarise"),
        "dataset_rescale": (True, "each case's summed inputs scale by δ; its mean and std too"),
        "dataset_recenter": (False, "aᵢ gains wᵢ·γ, a different shift per unit: not removed by the mean"),
        "case_rescale": (True, "that case's a scales by δ and is normalised by its own mean and std"),
    },
    "rms": {
        "weight_matrix_rescale": (True, "all units of a case scale by δ; their root mean square too"),
        "weight_matrix_recenter": (False, "each case gains a constant shift across units, and RMS norm subtracts no "
                                          "mean"),
        "weight_vector_rescale": (False, "units scale by different δᵢ; one RMS per case cannot undo that"),
        "dataset_rescale": (True, "each case's summed inputs scale by δ; their root mean square too"),
        "dataset_recenter": (False, "aᵢ gains wᵢ·γ, a different shift per unit, never subtracted"),
        "case_rescale": (True, "that case's a scales by δ and is divided by its own root mean square"),
    },
}

TRANSFORMATION_LABELS: dict[str, str] = {
    "weight_matrix_rescale": "W-matrix re-scale",
    "weight_matrix_recenter": "W-matrix re-center",
    "weight_vector_rescale": "W-vector re-scale",
    "dataset_rescale": "dataset re-scale",
    "dataset_recenter": "dataset re-center",
    "case_rescale": "single-case re-scale",
}


def explain(norm: str, transformation: str) -> str:
    """Why `norm` is or is not invariant to `transformation`, in one line, e.g.
    explain("layer", "weight_matrix_recenter") -> "invariant: aᵢ gains γ·xₙ, the same for every unit ..."."""
    (norm,) = _check_names(norm, NORMS, "norm")
    (transformation,) = _check_names(transformation, TRANSFORMATIONS, "transformation")
    invariant, why = THEORY[norm][transformation]
    return f"{'invariant' if invariant else 'not invariant'}: {why}"


def explanation_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured cell: norm, transformation (readable), measured, paper (Ba et al.; "—" where the
    paper has no row), relative deviation, agrees (measured == the algebra), and the one-line explanation."""
    yes_no = {True: "yes", False: "no"}
    rows = []
    for r in frame.itertuples(index=False):
        theory, why = THEORY[r.norm][r.transformation]
        rows.append(dict(
            norm=r.norm,
            transformation=TRANSFORMATION_LABELS[r.transformation],
            measured=yes_no[bool(r.invariant)],
            paper=yes_no[bool(r.paper)] if r.paper is not None and not pd.isna(r.paper) else "—",
            relative_deviation=float(r.relative_deviation),
            agrees=bool(r.invariant) == theory,
            why=why,
        ))
    order = {(n, t): i for i, (n, t) in enumerate((n, t) for n in NORMS for t in TRANSFORMATIONS)}
    keys = [order[(r.norm, r.transformation)] for r in frame.itertuples(index=False)]
    return pd.DataFrame(rows).iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)


def invariance_flags(frame: pd.DataFrame) -> dict[str, dict[str, bool]]:
    """{norm: {transformation: invariant}}, in NORMS / TRANSFORMATIONS order."""
    out: dict[str, dict[str, bool]] = {}
    for norm in NORMS:
        sub = frame[frame["norm"] == norm]
        if len(sub):
            flags = dict(zip(sub["transformation"], sub["invariant"]))
            out[norm] = {t: bool(flags[t]) for t in TRANSFORMATIONS if t in flags}
    return out


# ---------------------------------------------------------------------------------------------
# the network side: does one example's output depend on the batch it is in?
# ---------------------------------------------------------------------------------------------


def _label(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    return spec.norm if spec is not None else type(model).__name__


def batch_dependence(
    model: nn.Module | Mapping[str, nn.Module],
    images: torch.Tensor,
    batch_sizes: Sequence[int],
    *,
    example: int = 0,
    draws: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """How much one example's logits change with the other examples in its (train-mode) batch.

    images: float (N, C, H, W), already normalised. For each batch size b and each of `draws` random
    compositions, the example `example` is put in a batch with b-1 other images and its logits compared with
    its logits alone (batch of one). model: one net, or {label: net} to compare several (label defaults to
    the net's norm). Running statistics are left untouched. Returns rows (norm, batch_size, draw,
    max_change, logit_scale) with max_change = max |z - z_alone| and logit_scale = max |z_alone|.
    """
    models = dict(model) if isinstance(model, Mapping) else {_label(model): model}
    n = images.shape[0]
    if not 0 <= example < n:
        raise ValueError(f"example={example} is out of range for {n} images; use 0..{n - 1}")
    bad = [b for b in batch_sizes if not 1 <= int(b) <= n]
    if bad:
        raise ValueError(f"batch size {bad[0]} must be between 1 and the number of images ({n})")
    others = torch.tensor([i for i in range(n) if i != example])
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for label, net in models.items():
        device = next(net.parameters()).device
        x = images.to(device)
        with batch_stats_mode(net), torch.no_grad():
            alone = net(x[example : example + 1])[0]  # (K,)
            for b in batch_sizes:
                for d in range(draws):
                    pick = others[torch.randperm(len(others), generator=gen)[: int(b) - 1]]
                    batch = torch.cat([x[example : example + 1], x[pick.to(device)]])  # (b, C, H, W)
                    z = net(batch)[0]
                    rows.append(
                        dict(
                            norm=label,
                            batch_size=int(b),
                            draw=d,
                            max_change=(z - alone).abs().max().item(),
                            logit_scale=alone.abs().max().item(),
                        )
                    )
    return pd.DataFrame(rows)


def batch_dependence_nets(
    nets: Sequence,
    images_uint8: torch.Tensor,
    batch_sizes: Sequence[int],
    *,
    example: int = 0,
    draws: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """`batch_dependence` for trained nets (`resviz.analysis.nets.Net`: a model with its input mean/std).

    images_uint8: (N, 3, H, W) uint8, normalised per net. Rows as `batch_dependence` plus `net` (e.g.
    "ResNet-8, layer"), arch, depth and relative_change = max_change / logit_scale; `norm` is the net's norm.
    """
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}; "
                         "pass e.g. datasets.load('digits').test_images[:64]")
    if len(nets) == 0:
        raise ValueError("no nets given; pass nets.run_nets(folder) (resviz.analysis.nets)")
    frames = []
    for net in nets:
        spec = net.model.spec
        x = normalise_images(images, net.mean, net.std, "cpu")  # (N, 3, H, W)
        arch = "ResNet" if spec.arch == "resnet" else spec.arch
        label = f"{arch}-{spec.depth}, {spec.norm}"
        f = batch_dependence({label: net.model}, x, batch_sizes, example=example, draws=draws, seed=seed)
        frames.append(f.rename(columns={"norm": "net"}).assign(arch=spec.arch, depth=spec.depth, norm=spec.norm))
    out = pd.concat(frames, ignore_index=True)
    out["relative_change"] = out["max_change"] / out["logit_scale"]
    return out[["net", "arch", "depth", "norm", "batch_size", "draw", "max_change", "logit_scale", "relative_change"]]


def summarise_batch_dependence(frame: pd.DataFrame) -> pd.DataFrame:
    """Per net (or norm) and batch size: mean and largest change of the example's logits over the draws, in % of
    their scale. `frame`: `batch_dependence` or `batch_dependence_nets` rows."""
    key = "net" if "net" in frame.columns else "norm"
    pct = 100 * frame["max_change"] / frame["logit_scale"]
    g = frame.assign(pct=pct).groupby([key, "batch_size"], sort=False)["pct"]
    out = pd.DataFrame({"mean_change_pct": g.mean(), "max_change_pct": g.max(), "draws": g.size()}).reset_index()
    return out.rename(columns={key: "net"})


__all__ = [
    "NORMS",
    "PAPER_TABLE",
    "THEORY",
    "TRANSFORMATIONS",
    "TRANSFORMATION_LABELS",
    "batch_dependence",
    "batch_dependence_nets",
    "batch_stats_mode",
    "digits_inputs",
    "explain",
    "explanation_table",
    "invariance_flags",
    "invariance_grid",
    "measure_invariance",
    "normalise",
    "summarise_batch_dependence",
]
