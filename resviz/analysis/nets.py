"""Trained networks as the experiments take them: a model with the input normalisation it was trained with.

`Net` pairs a model with its per-channel mean/std (0..1 scale); `akamaster_nets` loads akamaster's CIFAR-10
ResNets, `run_nets` the final weights of run folders; `normalise_images` turns uint8 images into the float input
a net expects; `describe` lists nets in a table. bn_check, lesion and invariance all take lists of `Net`s:

    nets = akamaster_nets(["resnet20", "resnet56"]) + run_nets("runs/demo")
    x = normalise_images(images, nets[0].mean, nets[0].std, "cpu")   # uint8 (N, 3, H, W) -> float
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from resviz import runs
from resviz.evaluate import load_run_model
from resviz.io import read_json
from resviz.pretrained import AKAMASTER_FILES, AKAMASTER_MEAN, AKAMASTER_STD, find_local, pretrained


@dataclass(frozen=True, eq=False)
class Net:
    """A trained network with the input normalisation it was trained with (mean/std per channel, 0..1 scale)."""

    name: str  # becomes run_id in the tables
    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    seed: int = -1  # -1: unknown (a downloaded checkpoint)
    source: str = ""  # where the weights came from


def akamaster_nets(names: Sequence[str], *, search_dirs: Sequence[str | os.PathLike] = (),
                   progress: bool = False) -> list[Net]:
    """akamaster's CIFAR-10 ResNets by name, from `search_dirs`, $RESVIZ_CHECKPOINTS, or a download."""
    if isinstance(names, (str, os.PathLike)):
        names = [names]
    nets = []
    for name in names:
        model = pretrained(name, search_dirs=search_dirs, progress=progress)
        key = str(name).lower()
        if key in AKAMASTER_FILES:
            label, source = key, find_local(key, search_dirs) or f"torch hub ({AKAMASTER_FILES[key]})"
        else:
            label, source = Path(name).stem, name
        nets.append(Net(f"akamaster-{label}", model, AKAMASTER_MEAN, AKAMASTER_STD, source=str(source)))
    return nets


def run_nets(path_or_glob, *, mean=None, std=None) -> list[Net]:
    """The final weights of run folders (`runs/<id>/checkpoint.pt`), normalised as their data set was.

    mean/std: override the per-channel normalisation (default: the one the run trained with, from its checkpoint).
    """
    folders = runs.find_runs(path_or_glob)
    with_weights = [f for f in folders if (f / "checkpoint.pt").is_file()]
    if not with_weights:
        raise FileNotFoundError(
            f"no run with a checkpoint.pt under {path_or_glob}: train one first (resviz train, or sweeps.run_sweep)"
        )
    nets = []
    for folder in with_weights:
        config = read_json(folder / "config.json")
        model, m, s = load_run_model(folder)  # normalised as its data set was, unless overridden
        if mean is not None and std is not None:
            m, s = mean, std
        nets.append(Net(config.get("run_id", folder.name), model, tuple(m), tuple(s), seed=int(config["seed"]),
                        source=str(folder)))
    return nets


def describe(nets: Sequence[Net]) -> pd.DataFrame:
    """One row per net: name, architecture, depth, parameters, where its weights came from."""
    rows = []
    for net in nets:
        spec = getattr(net.model, "spec", None)
        rows.append({"name": net.name, "arch": getattr(spec, "arch", type(net.model).__name__),
                     "depth": getattr(spec, "depth", -1), "parameters": sum(p.numel() for p in net.model.parameters()),
                     "source": net.source})
    return pd.DataFrame(rows, columns=["name", "arch", "depth", "parameters", "source"])


def normalise_images(images: torch.Tensor, mean, std, device) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) normalised per channel."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be uint8 of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}; "
            "pass e.g. datasets.load('digits').test_images[:256]"
        )
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (images.to(device).float() / 255 - m) / s


__all__ = ["Net", "akamaster_nets", "describe", "normalise_images", "run_nets"]
