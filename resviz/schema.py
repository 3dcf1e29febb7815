"""The tidy tables' columns and dtypes, declared once.

`stats` is the long table the Recorder produces: one row per (run, step, layer, metric).
`metrics` is the per-step training log a run writes beside it (loss, errors, lr, time).
Every other module builds, reads and checks frames through this file.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# column -> kind ("str", "int", "float"); order is the order of the frame's columns.
STATS_COLUMNS: dict[str, str] = {
    "run_id": "str",  # folder name of the run ("" for an ad-hoc Recorder)
    "arch": "str",  # "resnet" | "plain" | the class name of a foreign model
    "depth": "int",  # 6n+2 for resviz models, -1 when unknown
    "norm": "str",  # "batch" | "layer" | "group" | "none" | "unknown"
    "shortcut": "str",  # "A" | "B" | "none" (plain) | "unknown"
    "seed": "int",
    "step": "int",  # optimiser steps taken before this measurement
    "epoch": "float",  # step * batch_size / train-set size (NaN when unknown)
    "layer": "str",  # dotted module path, e.g. "layer2.3.bn1"
    "layer_index": "int",  # position of the layer along depth, from 0 (per metric family)
    "stage": "int",  # 0 = stem, 1..3 = stages, 4 = head; -1 when unknown
    "block": "int",  # index of the block inside its stage, -1 for stem/head
    "metric": "str",  # one of METRICS
    "value": "float",  # float64; NaN and inf are kept
}

# The run metadata columns: what identifies a run in every row (the Recorder's run_info keys).
RUN_COLUMNS: dict[str, str] = {c: STATS_COLUMNS[c] for c in ("run_id", "arch", "depth", "norm", "shortcut", "seed")}
# The same keys with their Python type: what the Recorder's run_info may set and a run's rows carry.
RUN_INFO_KEYS: dict[str, type] = {k: str if kind == "str" else int for k, kind in RUN_COLUMNS.items()}
META_COLUMNS = tuple(k for k in RUN_INFO_KEYS if k != "run_id")  # what a run's config.json gives its rows

# The model a row was measured on, beside the run columns: the Recorder always writes them (after the stats
# columns); tables written before them, or built by hand, may lack them (`concat` fills in "unknown").
MODEL_COLUMNS: dict[str, str] = {
    "model": "str",  # the model's name: "resnet20", timm's "convnext_atto", HF's "gpt2" / its name_or_path
    "family": "str",  # where it comes from: "resviz", "torchvision resnet", "timm vision_transformer", "hf llama"
}
# What a parameter row is about (param-level metrics: grad_norm, grad_rel_norm, branch_scale): the Recorder always
# writes it ("" on rows that are not about a parameter); `concat` fills in "unknown" on param rows of tables
# written before it, "" on their other rows. Kinds: probes.blocks.PARAM_KINDS.
PARAM_COLUMNS: dict[str, str] = {
    "param_kind": "str",  # "weight" (conv/linear), "norm_scale", "norm_shift", "bias", "embedding", "other", ""
}
RECORDER_COLUMNS: dict[str, str] = {**MODEL_COLUMNS, **PARAM_COLUMNS}  # written by the Recorder after STATS_COLUMNS
# Optional columns: the model and parameter-kind columns, and the channel (only with Recorder(per_channel=True)).
OPTIONAL_COLUMNS: dict[str, str] = {
    **RECORDER_COLUMNS,
    "channel": "int",  # channel index for per-channel rows, -1 for pooled rows
}

# The unit of depth a metric's rows count along a figure's x axis (`layer_index`), by level.
LEVELS: dict[str, str] = {
    "layer": "norm layer",  # one row per normalisation layer, in model order
    "block": "residual add",  # one row per residual addition (a transformer layer has two: attn, mlp)
    "param": "parameter tensor",  # one row per parameter tensor, in model order
}
# The measurement modes a metric is taken in (the caption's "Measured: ..." line).
TRAIN_BATCH = "train mode, on the training batch of that step"
AFTER_BACKWARD = "after backward() on the training batch of that step"
HELDOUT_EVAL = "eval mode (running statistics), on a fixed held-out batch of test images"


@dataclass(frozen=True)
class Metric:
    """One row of the metric table: everything any module needs to know about a metric.

    Adding a metric means adding one `Metric` to `METRIC_TABLE`; the Recorder, the figures, the report and the
    test helpers read their names, levels, words, reference values and scales from here. The words are true of
    every model; what depends on the model (its norm kind, its residual adds, the literature that applies) the
    figures add from the recorded run metadata (`resviz.plots.words`).
    """

    name: str
    level: str  # "layer" (one row per norm layer), "block" (per residual add), "param" (per parameter tensor)
    unit: str  # unit shown in brackets on an axis: "a.u.", "a.u.²", "ratio", ...
    axis_title: str  # y-axis (or colour-bar) title
    title: str  # figure title
    short_title: str  # subplot / dropdown title
    meaning: str  # one line: what is measured, where, and any caveat (e.g. batch-size dependence)
    log_scale: bool = False  # drawn on a log axis by default
    default: bool = True  # recorded when a Recorder is not told which metrics to take
    recorded_by: str = "recorder"  # "recorder": a Recorder hook; "evaluation": resviz.measure at each evaluation
    measured: str = TRAIN_BATCH  # the mode and the data it is measured on, for a caption
    reference: float | None = None  # the value a dotted line marks, where `reference_meaning` holds
    reference_meaning: str = ""  # what the reference value is, and when it holds
    literature: str = ""  # a published result on BatchNorm CIFAR nets (said only of such runs)
    first_step: str = ""  # how the value at step 0 was measured, where it differs from the later steps

    @property
    def depth_unit(self) -> str:
        """What one step along a figure's x axis is: "norm layer", "residual add" or "parameter tensor"."""
        return LEVELS[self.level]


_UNIT_STD = "a norm layer's output std when its scale γ is 1 and its shift β 0, as at initialisation"
_HE_FIG7 = ("He et al. 2015 Fig. 7 (CIFAR-10, eval mode): ResNet responses are smaller than plain-net "
            "responses, and smaller the deeper the ResNet")

METRIC_TABLE: dict[str, Metric] = {m.name: m for m in (
    Metric("response_std", "layer", "a.u.", "response std (a.u.)", "Response std of each norm layer",
           "Response std per norm layer",
           "std of a norm layer's output over the batch (all positions and channels), before what follows it",
           reference=1.0, reference_meaning=_UNIT_STD, literature=_HE_FIG7),
    Metric("branch_std", "block", "a.u.", "branch std (a.u.)", "Residual branch std per residual add",
           "Branch std per add", "std of the residual branch F(x) at its end, before the addition"),
    Metric("skip_std", "block", "a.u.", "skip std (a.u.)", "Skip path std per residual add", "Skip std per add",
           "std of the skip path (identity or projection: the residual stream entering the add), before the "
           "addition; at an option-A downsampling block over the channels that carry signal (the zero-padded "
           "ones left out)"),
    Metric("sum_std", "block", "a.u.", "branch + skip std (a.u.)", "Std of branch + skip per residual add",
           "Branch + skip std per add", "std of branch + skip (the residual stream leaving the add), before any "
           "activation that follows"),
    Metric("branch_ratio", "block", "ratio", "‖F(x)‖ / ‖skip‖ (ratio)", "Branch-to-skip ratio per residual add",
           "Branch/skip ratio per add",
           "||F(x)|| / ||skip|| per residual add; at an option-A downsampling block both norms over the channels "
           "the skip carries (its zero-padded channels left out of branch and skip alike)", log_scale=True),
    Metric("grad_norm", "param", "loss per weight unit", "‖∂L/∂W‖₂ (loss per weight unit)",
           "Gradient norm per parameter tensor", "Gradient norm per parameter",
           "L2 norm of a parameter's gradient after backward(): the loss gradient alone, weight decay excluded (SGD "
           "adds it inside its step, after the recording); column param_kind says what the parameter is "
           "(conv/linear weight, norm scale or shift, bias: their scales differ several-fold)", log_scale=True,
           measured=AFTER_BACKWARD),
    Metric("grad_rel_norm", "param", "ratio", "‖∂L/∂W‖₂ / ‖W‖₂ (ratio)",
           "Relative gradient norm per weight tensor", "‖g‖/‖W‖ per weight tensor",
           "||dL/dW|| / ||W|| per conv/linear weight tensor (param_kind 'weight'), after backward(), weight decay "
           "excluded: the relative "
           "update size an SGD step of lr 1 would make (inf where W is all zero, e.g. Fixup's zero-initialised "
           "layers)", log_scale=True, measured=AFTER_BACKWARD),
    Metric("act_grad_norm", "block", "loss per a.u.", "‖∂L/∂x‖₂ at block output (loss per a.u.)",
           "Gradient norm w.r.t. each block's output", "Output-gradient norm per block",
           "L2 norm of the loss gradient w.r.t. a block's output (scales with 1/batch size: the loss is a mean)",
           log_scale=True, measured=AFTER_BACKWARD),
    Metric("channel_sq_mean", "block", "a.u.²", "mean over channels of (channel mean)² (a.u.²)",
           "Squared channel mean per residual add (signal propagation)", "Squared channel mean per add",
           "mean over channels (features) of (mean over batch and positions)², Brock et al. 2021", log_scale=True),
    Metric("channel_var", "block", "a.u.²", "mean channel variance (a.u.²)",
           "Channel variance per residual add (signal propagation)", "Channel variance per add",
           "mean over channels (features) of the variance over batch and positions, Brock et al. 2021",
           log_scale=True),
    Metric("branch_scale", "param", "ratio", "branch scale α (ratio)", "Branch scale per block",
           "Branch scale per block", "learnable scalar multiplying the residual branch (SkipInit / ReZero / Fixup)"),
    Metric("response_channel_std", "layer", "a.u.", "per-channel response std (a.u.)", "Per-channel response std",
           "Per-channel response std", "std over batch and positions of one channel of a norm layer's output "
           "(per_channel=True)", default=False),
    Metric("response_std_eval", "layer", "a.u.", "response std, eval mode on held-out images (a.u.)",
           "Response std of each norm layer, eval mode on held-out images",
           "Response std per norm layer (eval, held out)",
           "std of a norm layer's output with the model in eval mode (running statistics) on a fixed held-out "
           "batch of test images, at each evaluation", default=False, recorded_by="evaluation",
           measured=HELDOUT_EVAL, literature=_HE_FIG7,
           first_step="at step 0 the running statistics are first estimated from the first training batches, "
                      "on a copy of the net (untrained, they are mean 0 and variance 1: eval mode would be the "
                      "unnormalised net)"),
)}

# name -> one-line meaning (the contract view of the table)
METRICS: dict[str, str] = {name: m.meaning for name, m in METRIC_TABLE.items()}
RECORDER_METRICS: tuple[str, ...] = tuple(name for name, m in METRIC_TABLE.items() if m.recorded_by == "recorder")
DEFAULT_METRICS: tuple[str, ...] = tuple(name for name, m in METRIC_TABLE.items() if m.default)
LOG_METRICS: frozenset[str] = frozenset(name for name, m in METRIC_TABLE.items() if m.log_scale)


def metrics_at(level: str) -> tuple[str, ...]:
    """The metric names a Recorder records at one level ("layer", "block" or "param")."""
    return tuple(name for name in RECORDER_METRICS if METRIC_TABLE[name].level == level)


# The per-step training log (runs/<id>/metrics.parquet).
TRAIN_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "step": "int",  # optimiser steps done
    "epoch": "float",
    "loss": "float",  # mean training loss over the steps since the last log row
    "train_error": "float",  # fraction of training images misclassified since the last log row
    "test_error": "float",  # fraction of the test split misclassified (NaN when not evaluated)
    "test_loss": "float",
    "lr": "float",
    "seconds": "float",  # wall-clock seconds of training so far (excludes evaluation)
    "images_per_s": "float",
}
# Optional training-log columns: written by runs that measure them; NaN-filled when runs are concatenated.
TRAIN_OPTIONAL_COLUMNS: dict[str, str] = {
    "clean_train_error": "float",  # eval mode, un-augmented fixed subset of training images (NaN when not evaluated)
}

_CANONICAL = {"str": "category", "int": "int64", "float": "float64"}


def _matches(series: pd.Series, kind: str) -> bool:
    dtype = series.dtype
    if kind == "str":
        return (
            isinstance(dtype, pd.CategoricalDtype)
            or pd.api.types.is_string_dtype(dtype)
            or pd.api.types.is_object_dtype(dtype)
        )
    if kind == "int":
        return pd.api.types.is_integer_dtype(dtype)
    return pd.api.types.is_float_dtype(dtype)


def _check(df: pd.DataFrame, columns: dict[str, str], optional: dict[str, str], name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} table must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} table is missing column(s) {missing}; expected {list(columns)}")
    wrong = [
        f"{c} is {df[c].dtype}, expected {kind}"
        for c, kind in {**columns, **optional}.items()
        if c in df.columns and not _matches(df[c], kind)
    ]
    if wrong:
        raise ValueError(f"{name} table has mistyped column(s): {'; '.join(wrong)}")
    return df


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check a stats table: every column present with its kind of dtype and known metric names.

    Returns the frame unchanged so it can be chained; raises ValueError naming what is wrong.
    """
    _check(df, STATS_COLUMNS, OPTIONAL_COLUMNS, "stats")
    if len(df):
        unknown = sorted(set(map(str, pd.unique(df["metric"]))) - set(METRICS))
        if unknown:
            raise ValueError(f"stats table has unknown metric(s) {unknown}; valid: {sorted(METRICS)}")
    return df


def validate_train(df: pd.DataFrame) -> pd.DataFrame:
    """Check a per-step training log (metrics.parquet)."""
    return _check(df, TRAIN_COLUMNS, TRAIN_OPTIONAL_COLUMNS, "training-metrics")


def _coerce(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    out = df.copy()
    for c, kind in columns.items():
        if c not in out.columns:
            continue
        if kind == "str":
            out[c] = out[c].astype(str).astype("category")
        else:
            out[c] = out[c].astype(_CANONICAL[kind])
    return out


def coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a stats table to the canonical dtypes (categories for strings, int64, float64)."""
    return validate(_coerce(df, {**STATS_COLUMNS, **OPTIONAL_COLUMNS}))


def coerce_train(df: pd.DataFrame) -> pd.DataFrame:
    return validate_train(_coerce(df, {**TRAIN_COLUMNS, **TRAIN_OPTIONAL_COLUMNS}))


def empty(per_channel: bool = False, model: bool = False) -> pd.DataFrame:
    """An empty stats table with the right columns and dtypes (and, when `model`, the columns the Recorder adds:
    RECORDER_COLUMNS; when `per_channel`, the channel column)."""
    cols = {**STATS_COLUMNS, **(RECORDER_COLUMNS if model else {}), **({"channel": "int"} if per_channel else {})}
    return pd.DataFrame({c: pd.Series([], dtype=_CANONICAL[k]) for c, k in cols.items()})


def empty_train() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=_CANONICAL[k]) for c, k in TRAIN_COLUMNS.items()})


def _unknown_kind(df: pd.DataFrame) -> list[str]:
    """param_kind for a table written without it: "unknown" on param-level rows, "" on the others."""
    param = set(metrics_at("param"))
    return ["unknown" if m in param else "" for m in df["metric"].astype(str)]


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate stats tables of several runs, keeping the canonical dtypes."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty()
    per_channel = any("channel" in f.columns for f in frames)
    if per_channel:
        frames = [f if "channel" in f.columns else f.assign(channel=-1) for f in frames]
    for column in MODEL_COLUMNS:
        if any(column in f.columns for f in frames):
            frames = [f if column in f.columns else f.assign(**{column: "unknown"}) for f in frames]
    if any("param_kind" in f.columns for f in frames):
        frames = [f if "param_kind" in f.columns else f.assign(param_kind=_unknown_kind(f)) for f in frames]
    strings = {c: str for c, kind in {**STATS_COLUMNS, **RECORDER_COLUMNS}.items() if kind == "str" and c in frames[0]}
    plain = [f.astype(strings) for f in frames]
    return coerce(pd.concat(plain, ignore_index=True))
