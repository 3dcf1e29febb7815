"""Signal propagation at initialisation (Brock, De & Smith 2021) and the branch inits that tame it.

`signal_propagation` records with a Recorder, at each block's probe points, Brock et al.'s
    channel_sq_mean = mean_c (mean_{N,H,W} x_c)^2        channel_var = mean_c var_{N,H,W} x_c
as a tidy stats table (schema.STATS_COLUMNS; layer = "layer2.3.probe_out", layer_index = block position).
Their sum is the pooled second moment E[x^2] of the point.

What to expect in these post-activation blocks, x_{l+1} = relu(x_l + F(x_l)), F = conv-norm-relu-conv-norm
(ours, a mean-field argument: many channels, F independent of x_l with zero mean):
- no norm, He init: conv1 maps E[x^2] = q to Var 2q, the ReLU halves it to q, conv2 doubles it again:
  Var F = 2q. Without the final ReLU the second moment would triple; the ReLU clips the negative part of
  x + F. Exact bounds (F symmetric, uncorrelated with x >= 0): 1.5q <= E[relu(x + F)^2] <= 3q. Iterating
  x -> relu(x + sqrt(2 E[x^2]) xi) settles at about 2.4x per block (`mean_field_second_moments`). Zero
  padding trims the convs' fan-in at the border (`border_factor`: 0.92 / 0.84 / 0.71 for two convs on
  32 / 16 / 8 pixel maps), which gives about 2.30 / 2.20 / 2.02x per block in stages 1 / 2 / 3. At an
  option-A downsampling block half the channels are zero padding, whose output is relu(F) with E = c q,
  so the block grows E[x^2] by about (2.2 + 0.9)/2 = 1.5-1.7x. A plain net keeps E[x^2] (times the border
  factor) exactly: relu(F) has E = Var F / 2. (De & Smith's pre-activation x + F(x) doubles: 2^l.)
- batch norm: F has unit variance per channel, so E[x^2] grows additively, by a little under 1 per block
  (the ReLU clips less as x grows): linear in depth, while the branch variance stays at 1.
- SkipInit / ReZero (branch scale 0) and Fixup (last conv zero): F = 0 at init, every block is the identity
  (relu of a non-negative input); Fixup scales each first branch conv by L^(-1/2), L = number of blocks.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz import schema
from resviz.modes import batch_stats_mode, eval_mode
from resviz.models import check_depth, cifar_resnet, iter_blocks
from resviz.probes import Recorder
from resviz.probes.plan import moment_rows

POINTS = ("probe_out", "probe_branch", "probe_sum", "probe_skip")
MODES = ("train", "eval")
SIGNAL_METRICS = ("channel_sq_mean", "channel_var")


def channel_stats(x: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (2,): [mean_c mean_{B,...}(x_c)^2, mean_c var_{B,...}(x_c)] (biased variance)."""
    x = x.detach().float()
    dims = [0, *range(2, x.ndim)]
    mu = x.mean(dims)  # (C,)
    var = x.var(dims, unbiased=False)  # (C,)
    return torch.stack([(mu**2).mean(), var.mean()])


def _recorder(model: nn.Module, points: Sequence[str], run_info: dict | None = None) -> Recorder:
    """A Recorder whose rows are Brock et al.'s two metrics at each block's `points` (per block, in forward
    order: branch, skip, sum, out)."""
    bad = [p for p in points if p not in POINTS]
    if bad:
        raise ValueError(f"point {bad[0]!r} is unknown; use {', '.join(POINTS)}")
    rows = moment_rows(tuple(p.removeprefix("probe_") for p in points))
    return Recorder(model, every=1, metrics=SIGNAL_METRICS, run_info=run_info, block_rows=rows)


class _LiveMoments(Mapping):
    """{(block name, point): (2,) tensor [channel_sq_mean, channel_var]} of the Recorder's current step, read
    from it when looked at (points a forward pass has not reached are absent)."""

    def __init__(self, rec: Recorder):
        self._rec = rec

    def _read(self) -> dict[tuple[str, str], torch.Tensor]:
        frame = self._rec.peek()
        pairs: dict[tuple[str, str], list[float]] = {}
        for layer, metric, value in zip(frame["layer"].astype(str), frame["metric"].astype(str), frame["value"]):
            pairs.setdefault(tuple(layer.rsplit(".", 1)), [math.nan, math.nan])[SIGNAL_METRICS.index(metric)] = value
        return {key: torch.tensor(v) for key, v in pairs.items()}

    def __getitem__(self, key):
        return self._read()[key]

    def __iter__(self):
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


@contextlib.contextmanager
def signal_hooks(model: nn.Module, points: Sequence[str] = ("probe_out", "probe_branch")) -> Iterator[Mapping]:
    """A Recorder on every block's probe points; yields {(block name, point): (2,) tensor} of the last forward."""
    with _recorder(model, points) as rec:
        yield _LiveMoments(rec)


def _label(model: nn.Module) -> str:
    spec = model.spec
    extra = f"-{spec.branch_init}" if spec.branch_init else ""
    return f"{spec.arch}{spec.depth}-{spec.norm}{extra}"


def signal_propagation(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    points: Sequence[str] = ("probe_out", "probe_branch"),
    mode: str = "train",
    run_id: str | None = None,
    seed: int = 0,
    step: int = 0,
) -> pd.DataFrame:
    """One forward pass of `inputs` (B, C, H, W); Brock et al.'s metrics at each block's probe points, recorded
    by a Recorder (layer = "layer2.3.probe_out", layer_index = block position).

    mode "train": norms use batch statistics (running stats left untouched); "eval": running statistics.
    run_id labels the rows (default e.g. "resnet20-none-fixup"). Returns a coerced stats table.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use 'train' (batch statistics) or 'eval' (running statistics)")
    if inputs.ndim != 4 or inputs.shape[0] < 2:
        raise ValueError(f"inputs must be a batch (B >= 2, C, H, W), got shape {tuple(inputs.shape)}; use B >= 64")
    device = next(model.parameters()).device
    ctx = batch_stats_mode(model) if mode == "train" else eval_mode(model)
    run_info = dict(run_id=run_id if run_id is not None else _label(model), seed=seed)
    with ctx, _recorder(model, points, run_info) as rec, torch.no_grad():
        rec.begin_step(step)
        model(inputs.to(device))
        rec.end_step(step)
    return rec.frame()


def second_moments(frame: pd.DataFrame, point: str = "probe_out") -> pd.DataFrame:
    """Per block: channel_sq_mean + channel_var (= E[x^2]) and channel_var at `point`, in depth order."""
    sub = frame[frame["layer"].astype(str).str.endswith("." + point)]
    wide = sub.pivot_table(index=["layer_index", "stage", "block"], columns="metric", values="value", observed=True)
    wide = wide.reset_index().sort_values("layer_index")
    wide["second_moment"] = wide["channel_sq_mean"] + wide["channel_var"]
    return wide[["layer_index", "stage", "block", "second_moment", "channel_var"]].reset_index(drop=True)


def growth_rates(frame: pd.DataFrame, point: str = "probe_out", value: str = "second_moment") -> pd.DataFrame:
    """Per stage: `ratio` (geometric mean of value[i] / value[i-1] over the stage's non-downsampling blocks),
    `slope` and `intercept` (least-squares line of value vs block index), `downsample_ratio` (first block of
    the stage over the last block of the previous one; NaN for stage 1)."""
    v = second_moments(frame, point)
    rows = []
    for stage, g in v.groupby("stage"):
        y = g[value].to_numpy(dtype=float)
        ratios = y[1:] / y[:-1]
        slope, intercept = np.polyfit(g["block"], y, 1) if len(y) > 1 else (math.nan, math.nan)
        prev = v[v["stage"] == stage - 1]
        down = y[0] / prev[value].iloc[-1] if len(prev) else math.nan
        rows.append(
            dict(
                stage=int(stage),
                blocks=len(y),
                ratio=float(np.exp(np.log(ratios).mean())) if len(ratios) else math.nan,
                slope=float(slope),
                intercept=float(intercept),
                downsample_ratio=float(down),
            )
        )
    return pd.DataFrame(rows)


def border_factor(size: int, stride: int = 1) -> float:
    """Mean fraction of a 3x3, padding-1 conv's taps that fall inside a size x size map (zero padding
    shrinks the fan-in at the border): per dimension (3H - 2) / 3H, or (3H/2 - 1) / (3H/2) at stride 2."""
    out = size // stride
    per_dim = (3 * out - (2 if stride == 1 else 1)) / (3 * out)
    return per_dim**2


def mean_field_second_moments(
    depth: int,
    *,
    norm: str = "none",
    plain: bool = False,
    image_size: int = 32,
    samples: int = 200_000,
    seed: int = 0,
) -> pd.DataFrame:
    """E[x^2] at each block output predicted by the mean-field map (module doc), for N(0, 1) input images.

    Each element is one sample. Unnormalised: x -> relu(x + s xi) with s^2 = 2 c E[x^2], c the product of
    the two convs' `border_factor`s (plain: x -> relu(s xi), i.e. E[x^2] -> c E[x^2] exactly); batch norm:
    s = 1. At an option-A downsampling block half the elements (the zero-padded channels) become relu(s xi).
    """
    if norm not in ("none", "batch"):
        raise ValueError(f"norm={norm!r}: the mean-field prediction covers 'none' and 'batch' only")
    n = check_depth(depth)
    rng = np.random.default_rng(seed)
    # stem: relu(conv(x)), Var conv = 2 c (He, N(0, 1) input), or relu(bn(conv(x))) with Var 1
    stem_var = 2.0 * border_factor(image_size) if norm == "none" else 1.0
    x = np.maximum(rng.standard_normal(samples) * math.sqrt(stem_var), 0.0)
    size = image_size
    rows = []
    for pos in range(3 * n):
        stage, index = pos // n + 1, pos % n
        down = index == 0 and stage > 1
        c = border_factor(size, 2 if down else 1) * border_factor(size // 2 if down else size)
        size = size // 2 if down else size
        s = math.sqrt(2.0 * c * np.mean(x**2)) if norm == "none" else 1.0
        f = s * rng.standard_normal(samples)
        if plain:
            x = np.maximum(f, 0.0)
        else:
            skip = x.copy()
            if down:
                skip[: samples // 2] = 0.0  # zero-padded channels
            x = np.maximum(skip + f, 0.0)
        rows.append(dict(layer_index=pos, stage=stage, block=index, second_moment=float(np.mean(x**2))))
    return pd.DataFrame(rows)


def branch_scales(model: nn.Module) -> dict[str, float]:
    """{block name: value of its branch_scale} for SkipInit / ReZero / Fixup blocks (empty for others)."""
    return {
        name: float(block.branch_scale.detach())
        for _, _, name, block in iter_blocks(model)
        if isinstance(getattr(block, "branch_scale", None), torch.Tensor)
    }


def branch_init_scales(model: nn.Module) -> pd.DataFrame:
    """Per block: std of conv1's weights over the He std its init starts from (Fixup: ~ L^-1/2), the largest
    |conv2 weight| (Fixup: 0) and the branch scale (NaN when the block has none). The He std is sqrt(2 / fan_in)
    for resviz's default init (kaiming_normal_, as akamaster) and sqrt(2 / fan_out) for Fixup, whose official
    CIFAR code draws the first branch layer with the fan-out He std."""
    scales = branch_scales(model)
    rows = []
    for _, _, name, block in iter_blocks(model):
        w1 = block.conv1.weight.detach()  # (C_out, C_in, k, k)
        fan = w1[:, 0].numel() if getattr(block, "branch_init", None) == "fixup" else w1[0].numel()
        rows.append(
            dict(
                block=name,
                conv1_std_over_he=float(w1.std()) / math.sqrt(2.0 / fan),
                conv2_abs_max=float(block.conv2.weight.detach().abs().max()),
                branch_scale=scales.get(name, math.nan),
            )
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Brock et al.'s comparison at init, and De & Smith's variance argument against the measurement
# ---------------------------------------------------------------------------------------------
# label -> cifar_resnet options. SkipInit, ReZero and Fixup are normalisation-free, as in their papers.
VARIANTS: dict[str, dict] = {
    "BN-ResNet": dict(norm="batch"),
    "ResNet, no norm": dict(norm="none"),
    "SkipInit": dict(norm="none", branch_init="skipinit"),
    "ReZero": dict(norm="none", branch_init="rezero"),
    "Fixup": dict(norm="none", branch_init="fixup"),
    "plain, BN": dict(norm="batch", plain=True),
    "plain, no norm": dict(norm="none", plain=True),
}
DEFAULT_VARIANTS = ("BN-ResNet", "ResNet, no norm", "SkipInit", "ReZero", "Fixup")


def gaussian_images(n: int = 64, image_size: int = 32, seed: int = 0) -> torch.Tensor:
    """n N(0, 1) images (n, 3, size, size): Brock et al.'s input for signal propagation plots."""
    if n < 2:
        raise ValueError(f"n={n} images: use at least 2 (statistics over the batch), e.g. 64")
    return torch.randn(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def signal_at_init(
    depth: int,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    *,
    width: int = 16,
    n_images: int = 64,
    image_size: int = 32,
    seeds: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """`signal_propagation` of freshly initialised nets, one per variant (`VARIANTS`) and seed, on the same
    N(0, 1) images (batch statistics). run_id = the variant's label; seed = the init seed."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"variant {bad[0]!r} is unknown; use one of {', '.join(VARIANTS)}")
    if seeds < 1:
        raise ValueError(f"seeds={seeds} must be at least 1")
    x = gaussian_images(n_images, image_size, seed)  # (n, 3, H, W)
    frames = []
    for variant in variants:
        for s in range(seed, seed + seeds):
            torch.manual_seed(s)
            model = cifar_resnet(depth, width=width, **VARIANTS[variant]).to(device)
            frames.append(signal_propagation(model, x, run_id=variant, seed=s))
    return schema.concat(frames)


def _within_stage_ratio(v: pd.DataFrame) -> float:
    """Geometric mean of second_moment[i] / second_moment[i-1] over consecutive blocks of the same stage."""
    y, stage = v["second_moment"].to_numpy(float), v["stage"].to_numpy()
    same = stage[1:] == stage[:-1]
    logs = np.log(y[1:][same] / y[:-1][same])
    return float(np.exp(logs.mean())) if len(logs) else math.nan


def _stage1_slope(v: pd.DataFrame) -> float:
    first = v[v["stage"] == 1]
    return float(np.polyfit(first["block"], first["second_moment"], 1)[0]) if len(first) > 1 else math.nan


def growth_check(frame: pd.DataFrame, *, image_size: int = 32) -> pd.DataFrame:
    """Measured growth of E[x^2] at the block outputs against two predictions, one row per variant (run_id):

    unnormalised ResNet / plain net: growth factor per block within a stage; De & Smith (x + F(x), Var F = Var x):
    2 (ResNet), 1 (plain); mean field (this post-activation block, `mean_field_second_moments`).
    BN: increase of E[x^2] per block (slope in stage 1); De & Smith: +1 per block (the branch adds unit variance).
    SkipInit, ReZero, Fixup: growth factor per block; both predictions 1 (every block is the identity at init).
    Seeds are pooled (E[x^2] averaged) before fitting. Columns: variant, quantity, de_smith, mean_field,
    measured, measured_over_mean_field.
    """
    runs = list(dict.fromkeys(frame["run_id"].astype(str)))
    rows = []
    for run in runs:
        mine = frame[(frame["run_id"].astype(str) == run).to_numpy()]
        meta = mine.iloc[0]
        v = second_moments(mine).groupby(["layer_index", "stage", "block"], as_index=False)["second_moment"].mean()
        depth, norm, plain = int(meta["depth"]), str(meta["norm"]), str(meta["arch"]) == "plain"
        identity = run in ("SkipInit", "ReZero", "Fixup") or (run in VARIANTS and "branch_init" in VARIANTS[run])
        if identity:
            quantity, de_smith, mean_field, measured = "growth factor per block", 1.0, 1.0, _within_stage_ratio(v)
        elif norm == "batch" and not plain:
            mf = mean_field_second_moments(depth, norm="batch", image_size=image_size)
            quantity, de_smith, mean_field, measured = ("increase per block (stage 1 slope)", 1.0, _stage1_slope(mf),
                                                        _stage1_slope(v))
        elif norm in ("batch", "none"):
            mf = mean_field_second_moments(depth, norm=norm, plain=plain, image_size=image_size)
            de_smith = 1.0 if plain else (2.0 if norm == "none" else math.nan)
            quantity, mean_field, measured = "growth factor per block", _within_stage_ratio(mf), _within_stage_ratio(v)
        else:
            continue  # layer / group norm: no prediction here
        rows.append(dict(variant=run, quantity=quantity, de_smith=de_smith, mean_field=mean_field,
                         measured=measured, measured_over_mean_field=measured / mean_field))
    return pd.DataFrame(rows, columns=["variant", "quantity", "de_smith", "mean_field", "measured",
                                       "measured_over_mean_field"])


__all__ = [
    "DEFAULT_VARIANTS",
    "POINTS",
    "VARIANTS",
    "gaussian_images",
    "growth_check",
    "signal_at_init",
    "branch_init_scales",
    "branch_scales",
    "channel_stats",
    "growth_rates",
    "border_factor",
    "mean_field_second_moments",
    "second_moments",
    "signal_hooks",
    "signal_propagation",
]
