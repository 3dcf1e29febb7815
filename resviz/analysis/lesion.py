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

Many nets at once (akamaster checkpoints, your runs: `resviz.analysis.nets.Net`s, each with its input
mean/std):

    test = load_test_set("cifar10", n=2000)          # or an ImageFolder tree / its .tar.gz
    single, random = lesion_nets(nets, test.images, test.labels, ks=(1, 2, 4, 8))
    lesion_summary(single)
"""
from __future__ import annotations

import contextlib
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from resviz import datasets
from resviz.evaluate import evaluate
from resviz.modes import eval_mode
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
    (default: where it is). Returns one row per removed block: position, block, stage, index, downsample, error,
    delta (error minus the intact net's error, which is also in `frame.attrs["baseline_error"]`).
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


def check_ks(model: nn.Module, ks: Sequence[int]) -> list[str]:
    """The model's block names, once every k of `ks` is a number of blocks it can lose (else a ValueError)."""
    names = list(block_table(model)["block"])
    bad = [k for k in ks if not 0 <= int(k) <= len(names)]
    if bad:
        raise ValueError(f"k={bad[0]} blocks cannot be removed from {_describe(model)}: use 0..{len(names)}")
    return names


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
    names = check_ks(model, ks)
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


def lesion_nets(
    nets: Sequence,
    images_uint8: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    ks: Sequence[int] | None = None,
    draws: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """`lesion_single` (every block) and, with `ks`, `lesion_random` for each net (`resviz.analysis.nets.Net`: a
    model with the input mean/std it was trained with).

    Returns (single, random or None), each with the net in columns run_id (its name), arch, depth, norm,
    shortcut, seed and the intact net's error in `baseline_error`. k larger than a net's number of blocks is
    left out for that net.
    """
    if len(nets) == 0:
        raise ValueError("no nets given; pass nets.akamaster_nets([...]) and/or nets.run_nets(folder) "
                         "(resviz.analysis.nets)")
    singles, randoms = [], []
    for net in nets:
        spec = getattr(net.model, "spec", None)
        info = dict(run_id=net.name, arch=getattr(spec, "arch", type(net.model).__name__),
                    depth=getattr(spec, "depth", -1), norm=getattr(spec, "norm", "unknown"),
                    shortcut=getattr(spec, "shortcut", "unknown"), seed=int(getattr(net, "seed", -1)))
        kw = dict(mean=net.mean, std=net.std, device=device, batch_size=batch_size)
        single = lesion_single(net.model, images_uint8, labels, progress=progress, **kw)
        singles.append(single.assign(**info, baseline_error=single.attrs["baseline_error"]))
        if ks is not None:
            n_blocks = len(block_table(net.model))
            mine = [int(k) for k in ks if int(k) <= n_blocks]
            if mine:
                rand = lesion_random(net.model, images_uint8, labels, ks=mine, draws=draws, seed=seed,
                                     progress=progress, **kw)
                randoms.append(rand.assign(**info, baseline_error=rand.attrs["baseline_error"]))
    first = ["run_id", "arch", "depth", "norm", "shortcut", "seed"]
    single = pd.concat(singles, ignore_index=True)
    single = single[first + [c for c in single.columns if c not in first]]
    if not randoms:
        return single, None
    random = pd.concat(randoms, ignore_index=True)
    return single, random[first + [c for c in random.columns if c not in first]]


def lesion_summary(single: pd.DataFrame) -> pd.DataFrame:
    """Per net (rows of `lesion_nets`): blocks, intact error, median and mean change over the blocks that do not
    downsample, the costliest block and its change, and the mean change at downsampling blocks (all in %)."""
    rows = []
    for run_id, g in single.groupby("run_id", sort=False):
        rest, down = g[~g["downsample"]], g[g["downsample"]]
        worst = g.loc[g["delta"].idxmax()]
        rows.append(dict(
            run_id=run_id, arch=g["arch"].iloc[0], depth=int(g["depth"].iloc[0]), blocks=len(g),
            intact_error=100 * float(g["baseline_error"].iloc[0]),
            median_change=100 * float(rest["delta"].median()) if len(rest) else np.nan,
            mean_change=100 * float(rest["delta"].mean()) if len(rest) else np.nan,
            costliest_block=str(worst["block"]), costliest_change=100 * float(worst["delta"]),
            downsampling_change=100 * float(down["delta"].mean()) if len(down) else np.nan,
        ))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# a real test set: a datasets.load spec, or an ImageFolder tree packed as .tar.gz (read, not extracted)
# ---------------------------------------------------------------------------------------------
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True, eq=False)
class TestSet:
    """Test images as uint8 (N, 3, 32, 32) with int64 labels (N,), and where they came from."""

    __test__ = False  # not a pytest class

    name: str
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __repr__(self) -> str:
        return f"TestSet({self.name!r}, {len(self.labels)} images, {len(self.classes)} classes)"


def is_archive(spec: str | os.PathLike) -> bool:
    return str(spec).lower().endswith(ARCHIVE_SUFFIXES)


def _archive_test_split(path: Path) -> tuple[list[bytes], list[int], list[str]]:
    """Bytes and class labels of the `test/<class>/<image>` members of a tar archive, one pass, nothing extracted."""
    found: list[tuple[str, str, bytes]] = []
    with tarfile.open(path) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != "test":
                continue
            found.append((parts[-2], member.name, tar.extractfile(member).read()))
    if not found:
        raise ValueError(f"{path} holds no test/<class>/<image> files; pack an ImageFolder tree (train/, test/)")
    found.sort(key=lambda t: t[1])
    classes = sorted({c for c, _, _ in found})
    return [b for _, _, b in found], [classes.index(c) for c, _, _ in found], classes


def _decode(blobs: list[bytes]) -> torch.Tensor:
    """JPEG (batched) or PNG bytes -> uint8 (N, 3, 32, 32); other sizes resized to 32x32 (antialiased)."""
    # deferred: torchvision loads torch._dynamo, which at the top doubles `resviz --help`'s start-up; only archives
    # are decoded here
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    out = torch.empty((len(data), 3, 32, 32), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        jpeg = [i for i, d in enumerate(data) if d[:2].tolist() == [0xFF, 0xD8]]
        decoded = dict(zip(jpeg, decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB))) if jpeg else {}
        for i, d in enumerate(data):
            img = decoded[i] if i in decoded else decode_image(d, mode=ImageReadMode.RGB)  # (3, h, w)
            if img.shape[1:] != (32, 32):
                img = resize(img, [32, 32], antialias=True)
            out[i] = img
    return out


def load_test_set(
    spec: str | os.PathLike,
    *,
    root: str | os.PathLike = "data",
    n: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TestSet:
    """The test split named by `spec`: "cifar10", "digits", "imagefolder:PATH" (through `resviz.datasets.load`,
    cached in `root`), or a .tar.gz / .tgz / .tar of an ImageFolder tree, whose test/ images are read straight
    from the archive (only the n drawn are decoded). n: a fixed random subset (seed) of n images; None: all."""
    if is_archive(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no archive at {path}; pass a .tar.gz of an ImageFolder tree or a dataset spec")
        blobs, targets, classes = _archive_test_split(path)
        pick = _subset(len(blobs), n, seed)
        images = _decode([blobs[i] for i in pick.tolist()])
        labels = torch.tensor(targets, dtype=torch.int64)[pick]
        return TestSet(f"{path.name} (test split)", images, labels, classes)
    data = datasets.load(str(spec), root=root, progress=progress)
    pick = _subset(len(data.test_labels), n, seed)
    return TestSet(f"{data.name} (test split)", data.test_images[pick], data.test_labels[pick], list(data.classes))


def _subset(total: int, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= total:
        return torch.arange(total)
    if n < 1:
        raise ValueError(f"n={n} images: use a positive number, or None for the whole test split")
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    return tqdm(items, desc=desc)


__all__ = [
    "TestSet",
    "block_table",
    "check_ks",
    "error_rate",
    "eval_mode",
    "is_archive",
    "lesion_nets",
    "lesion_random",
    "lesion_single",
    "lesion_summary",
    "load_test_set",
    "removed_blocks",
    "resolve_blocks",
    "summarise_random",
]
