"""Lesion study (Veit, Wilber & Belongie 2016): remove blocks at test time and measure the test error.

A removed block outputs its skip path: y = relu(shortcut(x)) (y = shortcut(x) for ReZero blocks, which have
no ReLU after the sum), i.e. the block with its residual branch set to zero. For option-A ResNets and plain
nets the input is post-ReLU, so this is Veit's y_i = y_{i-1} (subsampled and zero-padded at a downsampling
block); with option B the 1x1 projection (+ norm) is kept, as Veit keeps projections.

A plain net has no skip path, so its block is replaced by the only map the shapes allow: the identity inside
a stage, and at a downsampling block the option-A map (subsample by 2, zero-pad the new channels). The
block's whole computation is lost, which is why plain nets collapse.

Removal swaps the block's `forward` for the duration of a `with` block and always restores it:

    with removed_blocks(model, ["layer2.3", 5]):
        error = error_rate(model, images, labels, mean=MEAN, std=STD)
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from resviz.models import ShortcutA, iter_blocks

_MISSING = object()


def block_table(model: nn.Module) -> pd.DataFrame:
    """One row per block in depth order: position, block ('layer2.0'), stage, index, downsample."""
    rows = []
    for pos, (stage, index, name, block) in enumerate(iter_blocks(model)):
        conv = block.conv1
        down = conv.stride != (1, 1) or conv.in_channels != conv.out_channels
        rows.append(dict(position=pos, block=name, stage=stage, index=index, downsample=down))
    if not rows:
        raise ValueError(f"{type(model).__name__} has no residual blocks (layer1..layer3); use a resviz model")
    return pd.DataFrame(rows)


def _describe(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    return f"{spec.arch}-{spec.depth}" if spec is not None else type(model).__name__


def resolve_blocks(model: nn.Module, blocks: Iterable[int | str]) -> list[str]:
    """Block names for positions (0..N-1 in depth order) or names ('layer2.0'); raises naming the valid range."""
    table = block_table(model)
    names = list(table["block"])
    n = len(names)
    out = []
    for b in [blocks] if isinstance(blocks, (int, str)) else blocks:
        if isinstance(b, str) and b.strip().lstrip("-").isdigit():
            b = int(b)
        if isinstance(b, (int, np.integer)) and not isinstance(b, bool) and 0 <= b < n:
            out.append(names[int(b)])
        elif isinstance(b, str) and b in names:
            out.append(b)
        else:
            raise ValueError(
                f"block {b!r} does not exist: {_describe(model)} has {n} blocks; "
                f"use an index 0..{n - 1} or a name {names[0]}..{names[-1]}"
            )
    return out


def _skip_path(block: nn.Module) -> nn.Module:
    if not getattr(block, "plain", False):
        return block.shortcut
    conv = block.conv1
    if conv.stride == (1, 1) and conv.in_channels == conv.out_channels:
        return nn.Identity()
    if conv.in_channels + 2 * (conv.out_channels // 4) != conv.out_channels:
        raise ValueError(
            f"cannot bypass a plain block mapping {conv.in_channels} to {conv.out_channels} channels with "
            "option A (it pads out_channels/4 per side); only doubling the width is supported"
        )
    return ShortcutA(conv.out_channels).to(conv.weight.device)


def _bypass(block: nn.Module):
    skip = _skip_path(block)
    relu_after = getattr(block, "branch_init", None) != "rezero"

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C, H', W')
        out = skip(x)
        return block.probe_out(F.relu(out) if relu_after else out)

    return forward


@contextlib.contextmanager
def removed_blocks(model: nn.Module, blocks: Iterable[int | str]) -> Iterator[list[str]]:
    """Within the `with`, the given blocks (positions or names) output their skip path; restored on exit."""
    names = resolve_blocks(model, blocks)
    by_name = {name: block for _, _, name, block in iter_blocks(model)}
    saved = []
    try:
        for name in dict.fromkeys(names):
            block = by_name[name]
            saved.append((block, block.__dict__.get("forward", _MISSING)))
            block.forward = _bypass(block)
        yield names
    finally:
        for block, old in reversed(saved):
            if old is _MISSING:
                del block.forward
            else:
                block.forward = old


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode inside the `with`; each module's own flag restored on exit."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def error_rate(
    model: nn.Module,
    images_uint8: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device | None = None,
    batch_size: int = 500,
) -> float:
    """Fraction of uint8 images (N, 3, H, W) misclassified, in eval mode (resviz.evaluate.evaluate);
    device None: the model's own device."""
    from resviz.evaluate import evaluate

    images = torch.as_tensor(images_uint8)
    labels = torch.as_tensor(labels).long()
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
    device = device if device is not None else next(model.parameters()).device
    result = evaluate(model, images, labels, mean=mean, std=std, batch_size=batch_size, device=device, progress=False)
    return 1.0 - result["accuracy"]


def lesion_single(
    model: nn.Module,
    images_uint8: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device | None = None,
    batch_size: int = 500,
    blocks: Iterable[int | str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Remove each block in turn (or only `blocks`) and measure the test error.

    images_uint8: (N, 3, H, W) uint8, normalised with mean/std (0..1 scale); device: moves the model there
    (default: where it is). Returns one row per removed block: position, block, stage, index, downsample, error, delta (error minus
    the intact net's error, which is also in `frame.attrs["baseline_error"]`).
    """
    if device is not None:
        model.to(device)
    table = block_table(model)
    chosen = resolve_blocks(model, blocks) if blocks is not None else list(table["block"])
    kw = dict(mean=mean, std=std, device=device, batch_size=batch_size)
    baseline = error_rate(model, images_uint8, labels, **kw)
    errors = {}
    for name in _progress(chosen, progress, "lesion"):
        with removed_blocks(model, [name]):
            errors[name] = error_rate(model, images_uint8, labels, **kw)
    frame = table[table["block"].isin(errors)].reset_index(drop=True)
    frame["error"] = frame["block"].map(errors).astype(float)
    frame["delta"] = frame["error"] - baseline
    frame.attrs.update(baseline_error=baseline, n=len(labels))
    return frame


def lesion_random(
    model: nn.Module,
    images_uint8: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    ks: Sequence[int] = (1, 2, 4, 8),
    draws: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> pd.DataFrame:
    """Remove k blocks drawn at random (without replacement), `draws` times per k.

    Returns rows (k, draw, error, delta, removed) with removed = the comma-joined block names;
    `summarise_random` turns it into mean +- std per k.
    """
    if device is not None:
        model.to(device)
    names = list(block_table(model)["block"])
    bad = [k for k in ks if not 0 <= int(k) <= len(names)]
    if bad:
        raise ValueError(f"k={bad[0]} blocks cannot be removed from {_describe(model)}: use 0..{len(names)}")
    if draws < 1:
        raise ValueError(f"draws={draws} must be at least 1")
    kw = dict(mean=mean, std=std, device=device, batch_size=batch_size)
    baseline = error_rate(model, images_uint8, labels, **kw)
    rng = np.random.default_rng(seed)
    rows = []
    jobs = [(int(k), d) for k in ks for d in range(draws)]
    for k, d in _progress(jobs, progress, "random lesion"):
        pick = sorted(rng.choice(len(names), size=k, replace=False).tolist())
        with removed_blocks(model, pick) as removed:
            error = error_rate(model, images_uint8, labels, **kw)
        rows.append(dict(k=k, draw=d, error=error, delta=error - baseline, removed=",".join(removed)))
    frame = pd.DataFrame(rows)
    frame.attrs.update(baseline_error=baseline, n=len(labels))
    return frame


def summarise_random(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1; 0 for one draw) of the error per k."""
    g = frame.groupby("k")["error"]
    out = pd.DataFrame({"mean_error": g.mean(), "std_error": g.std(ddof=1).fillna(0.0), "draws": g.size()})
    return out.reset_index()


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


__all__ = [
    "block_table",
    "error_rate",
    "eval_mode",
    "lesion_random",
    "lesion_single",
    "removed_blocks",
    "resolve_blocks",
    "summarise_random",
]
