"""He et al. Fig. 7 on trained networks, and the BatchNorm γ/β cross-check of what it measures.

A BatchNorm output is y_c = γ_c x̂_c + β_c, where x̂_c is channel c normalised by the statistics BN uses.
Pooled over N·C·H·W, its variance splits into the mean within-channel variance plus the variance of the
channel means:
    std²(y) = mean_c(γ_c² var x̂_c) + var_c(γ_c mean x̂_c + β_c)  ≈  mean_c γ_c² + var_c β_c
when x̂_c has mean 0 and variance 1 (var_c: population variance over the C channels). So the response std of
Fig. 7 is set mostly by the learned affine parameters. `predicted_response_std(model)` computes the right-hand
side from the weights alone; `measure` records the real response std with the Recorder (one forward pass of
the given images, BN with its running statistics as at test time, or with the batch's own statistics as in
training, where the identity holds up to BN's eps); `cross_check` puts the two side by side. The nets
(`Net`, `akamaster_nets`, `run_nets`, `describe`) live in `resviz.analysis.nets` and are re-exported here.

    nets = akamaster_nets(["resnet20", "resnet56"]) + run_nets("runs/demo")   # resviz.analysis.nets
    stats = measure(nets, images)                    # the tidy table: response_std (+ per channel)
    table = cross_check(nets, stats)                 # run, layer, measured, predicted, ratio
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz import datasets, schema
from resviz.analysis.lesion import TestSet, load_test_set
from resviz.analysis.nets import Net, akamaster_nets, describe, normalise_images, run_nets  # noqa: F401 (re-exported)
from resviz.modes import batch_stats_mode, eval_mode
from resviz.probes import Recorder
from resviz.probes.blocks import NORM_TYPES, SKIP_PATH_NAMES

BN_MODES = ("running", "batch")
PREDICTED_COLUMNS = ("layer", "layer_index", "channels", "gamma_sq_mean", "beta_var", "predicted")
CHECK_COLUMNS = ("run_id", "arch", "depth", "norm", "shortcut", "seed", "layer", "layer_index", "measured",
                 "predicted", "ratio")


def measure(nets: Sequence[Net], images: torch.Tensor, *, bn: str = "running", per_channel: bool = False,
            device: str | torch.device = "cpu") -> pd.DataFrame:
    """Response std of every norm layer of each net over `images` (one forward pass each), as the tidy table.

    bn="running": BN normalises with its running statistics (eval mode, He et al.'s test-time Fig. 7);
    bn="batch": with these images' own statistics (training mode, on a copy: running statistics untouched).
    per_channel adds response_channel_std rows (column `channel`).
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn={bn!r} is unknown; use 'running' (eval mode) or 'batch' (batch statistics)")
    if len(nets) == 0:
        raise ValueError("no networks to measure; pass akamaster_nets([...]) and/or run_nets(folder)")
    if len(images) < 2:
        raise ValueError(f"got {len(images)} image(s); pass at least 2 (a std needs several values)")
    frames = []
    for net in nets:
        # batch statistics on a copy, so the caller's net stays on its device; each switch restores on exit
        model = (copy.deepcopy(net.model) if bn == "batch" else net.model).to(device)
        mode = batch_stats_mode if bn == "batch" else eval_mode
        x = normalise_images(images, net.mean, net.std, device)  # (N, 3, H, W)
        info = {"run_id": net.name, "seed": int(net.seed)}
        with mode(model), Recorder(model, every=1, metrics=["response_std"], per_channel=per_channel,
                                   run_info=info) as rec:
            with torch.no_grad():
                model(x)
            rec.step()
        frames.append(rec.frame())
    return schema.concat(frames)


def _norm_layers(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """(layer_index, name, module) of the norm layers the Recorder's response_std covers, in its order."""
    norms = [(n, m) for n, m in model.named_modules()
             if isinstance(m, NORM_TYPES) and not SKIP_PATH_NAMES & set(n.split("."))]
    return [(i, n, m) for i, (n, m) in enumerate(norms)]


def predicted_response_std(model: nn.Module) -> pd.DataFrame:
    """sqrt(mean_c γ_c² + var_c β_c) of every BatchNorm the Recorder observes, from the weights alone.

    Columns: layer, layer_index (as in the Recorder's response_std rows), channels, gamma_sq_mean
    (mean_c γ_c²), beta_var (population variance of β over channels), predicted. BN without affine
    parameters counts as γ = 1, β = 0.
    """
    rows = []
    for index, name, module in _norm_layers(model):
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        c = module.num_features
        with torch.no_grad():
            gamma = module.weight.detach().double().cpu() if module.affine else torch.ones(c, dtype=torch.float64)
            beta = module.bias.detach().double().cpu() if module.affine else torch.zeros(c, dtype=torch.float64)
            g2 = gamma.square().mean()  # mean_c γ_c²
            bvar = beta.var(unbiased=False)  # var_c β_c
        rows.append((name, index, c, g2.item(), bvar.item(), (g2 + bvar).sqrt().item()))
    if not rows:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer the Recorder observes; the γ/β cross-check needs "
            "BatchNorm (norm='batch')"
        )
    frame = pd.DataFrame(rows, columns=list(PREDICTED_COLUMNS))
    return frame.astype({"layer_index": np.int64, "channels": np.int64})


def cross_check(nets: Sequence[Net], stats: pd.DataFrame) -> pd.DataFrame:
    """Measured (the last step of each net's response_std rows in `stats`) against predicted, per BN layer.

    Columns: run_id, arch, depth, norm, shortcut, seed, layer, layer_index, measured, predicted,
    ratio = measured / predicted. Nets without rows in `stats` raise, naming the runs that have rows.
    """
    rows = stats[(stats["metric"] == "response_std").to_numpy()]
    if "channel" in rows.columns:
        rows = rows[(rows["channel"] == -1).to_numpy()]
    have = sorted(map(str, pd.unique(rows["run_id"].astype(str)))) if len(rows) else []
    out = []
    for net in nets:
        mine = rows[(rows["run_id"].astype(str) == net.name).to_numpy()]
        if mine.empty:
            raise ValueError(f"no response_std rows for {net.name!r} in the table; runs with rows: {have or 'none'}; "
                             "measure it first: measure([net], images)")
        mine = mine[(mine["step"] == mine["step"].max()).to_numpy()]
        measured = mine[["run_id", "arch", "depth", "norm", "shortcut", "seed", "layer", "value"]].astype(
            {"run_id": str, "arch": str, "norm": str, "shortcut": str, "layer": str})
        pred = predicted_response_std(net.model)[["layer", "layer_index", "predicted"]]
        both = pred.merge(measured, on="layer", how="inner", validate="one_to_one")
        out.append(both.rename(columns={"value": "measured"}))
    table = pd.concat(out, ignore_index=True)
    table["ratio"] = table["measured"] / table["predicted"]
    return table[list(CHECK_COLUMNS)]


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: BN layers compared, median and extreme measured/predicted ratios, and the correlation of
    measured with predicted across layers (Pearson r of the logs)."""
    rows = []
    for run_id, g in table.groupby("run_id", sort=False, observed=True):
        ratio = g["ratio"].to_numpy(np.float64)
        a, b = np.log(g["measured"].to_numpy(np.float64)), np.log(g["predicted"].to_numpy(np.float64))
        r = float(np.corrcoef(a, b)[0, 1]) if len(g) > 2 and a.std() > 0 and b.std() > 0 else float("nan")
        rows.append({"run_id": str(run_id), "layers": len(g), "median_ratio": float(np.median(ratio)),
                     "min_ratio": float(ratio.min()), "max_ratio": float(ratio.max()), "log_r": r})
    return pd.DataFrame(rows, columns=["run_id", "layers", "median_ratio", "min_ratio", "max_ratio", "log_r"])


# ---- Fig. 7 on trained CIFAR-10 nets: which test images, named ----------------------------------------------
CIFAR10_OWN = "CIFAR-10's own test set (torchvision's cifar-10-batches-py)"
CIFAR10_JPEG = "the CIFAR-10 JPEG copy's test split (lossy, quality 75; not CIFAR-10's own test set)"


def cifar10_test_images(root: str | os.PathLike = "data", *, jpeg_copy: str | os.PathLike | None = None,
                        n: int | None = None, seed: int = 0) -> tuple[str, TestSet]:
    """(what the images are, in words; the test images) for nets trained on CIFAR-10: CIFAR-10's own test set
    when `root` holds torchvision's archive or its extracted `cifar-10-batches-py` (never downloaded here), else
    the JPEG copy at `jpeg_copy` (a folder tree or its .tar.gz), named as such. n: a fixed random subset."""
    root = Path(root)
    if (root / datasets.CIFAR10_FOLDER).is_dir() or (root / datasets.CIFAR10_ARCHIVE).is_file():
        return CIFAR10_OWN, load_test_set("cifar10", root=root, n=n, seed=seed)
    if jpeg_copy is not None and Path(jpeg_copy).exists():
        path = Path(jpeg_copy)
        spec = str(path) if path.is_file() else f"imagefolder:{path}"
        return CIFAR10_JPEG, load_test_set(spec, root=root, n=n, seed=seed)
    raise FileNotFoundError(f"no CIFAR-10 test images: {root} has neither {datasets.CIFAR10_ARCHIVE} nor "
                            f"{datasets.CIFAR10_FOLDER}/, and no JPEG copy was given (jpeg_copy=...)")


def measurement_text(bn: str, n_images: int, data: str) -> str:
    """What `measure(..., bn=bn)` on `n_images` images of `data` measured, in words, for a figure caption."""
    if bn not in BN_MODES:
        raise ValueError(f"bn={bn!r} is unknown; use 'running' (eval mode) or 'batch' (batch statistics)")
    mode = "eval mode (BN running statistics)" if bn == "running" else "BN on the batch's own statistics"
    return f"{mode}, one batch of {n_images:,} images of {data}"


def fig7_summary(nets: Sequence[Net], images: torch.Tensor, labels: torch.Tensor, data: str) -> pd.DataFrame:
    """Per net, He et al. Fig. 7's quantity on these test images: the mean over its 3×3 layers of the response
    std (eval mode, running statistics, one batch), the net's accuracy on the same images, and `data`, which
    says what the images are. Columns: net, layers, mean_response_std, accuracy, images, data."""
    stats = measure(nets, images)
    rows = []
    for net in nets:
        mine = stats[(stats["run_id"].astype(str) == net.name).to_numpy()]
        with eval_mode(net.model), torch.no_grad():
            logits = net.model(normalise_images(images, net.mean, net.std, "cpu"))  # (N, classes)
        accuracy = float((logits.argmax(1) == labels).double().mean())
        rows.append(dict(net=net.name, layers=len(mine), mean_response_std=float(mine["value"].mean()),
                         accuracy=accuracy, images=len(labels), data=data))
    return pd.DataFrame(rows)


__all__ = ["BN_MODES", "CIFAR10_JPEG", "CIFAR10_OWN", "Net", "agreement", "akamaster_nets", "cifar10_test_images",
           "cross_check", "describe", "fig7_summary", "measure", "measurement_text", "predicted_response_std",
           "run_nets"]
