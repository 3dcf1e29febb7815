"""How every figure looks: run colours and labels, palettes, axis and figure titles, hover text, the shared layout.

Per-metric words (axis title, title, short title, log scale) come from `resviz.schema.METRIC_TABLE`; this module
only adds what is about drawing: colours that depend on the run alone (so figures agree), the legend label of a
run, the hover template that names the layer, and `base_layout`, which every figure ends with.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import plotly.graph_objects as go

from resviz.plots.words import MISSING, SOURCES, is_resviz
from resviz.schema import LOG_METRICS, METRIC_TABLE

STEP_AXIS = "iteration (optimiser steps)"
HEIGHT = 500  # px, every figure's default height
DASHES = ("solid", "dash", "dot", "dashdot")  # the k-th part of a profile (see selection.split_parts)

# One colour per depth of the paper's list, neighbours apart in hue AND lightness, every one at least 4:1
# against white (WCAG contrast, so a thin line reads on the page): plain nets warm, ResNets cool, darker towards
# the deepest. Other depths take the nearest depth's colour on a log scale. Plain and residual nets (and each
# model family) differ by marker symbol too (`SYMBOLS`), not by hue alone.
_SHADE_DEPTHS = (8, 14, 20, 32, 44, 56, 110, 1202)
_PALETTES = {
    "plain": ("#B35C00", "#D0301F", "#8C6D00", "#AA3377", "#E8304A", "#882255", "#A04A0E", "#4D0E0E"),
    "resnet": ("#1F78B4", "#0B456C", "#1A8573", "#332288", "#118733", "#6A3D9A", "#0B6B45", "#1B1F5E"),
}
# Models that are not resviz nets: a colour per model name (a hash, so figures agree), as dark as the above.
_OTHER = ("#0F6E8C", "#7A3E9D", "#2E7D32", "#B5470B", "#5D4037", "#C2185B", "#455A64", "#1A237E")
# Marker symbol by kind of net: plain and residual resviz nets, and each source of other models.
SYMBOLS = {"plain": "square", "resnet": "circle", "timm": "diamond", "hf": "triangle-up", "torchvision": "cross",
           "other": "star"}
MIN_CONTRAST = 3.0  # WCAG non-text contrast against white every series colour keeps

# Lab figures: fixed colours for named normalisations and residual variants, a palette for any other label.
NORM_COLORS = {"batch": "#d62728", "layer": "#1f77b4", "group": "#2ca02c", "none": "#7f7f7f", "weight": "#9467bd",
               "rms": "#8c564b"}
VARIANT_COLORS = {"BN-ResNet": "#2166ac", "ResNet, no norm": "#d6604d", "SkipInit": "#1b9e77", "ReZero": "#7570b3",
                  "Fixup": "#9A7400", "plain, BN": "#a50f15", "plain, no norm": "#C26A00"}
VARIANT_DASHES = {"ReZero": "dash", "Fixup": "dot"}  # SkipInit, ReZero and Fixup coincide at init: keep all visible
_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#4D7F17", "#9A7400", "#a6761d", "#666666")
_ARCH_NORM_STYLE = {("plain", "batch"): ("#d7301f", "solid"), ("plain", "none"): ("#C26A00", "dash"),
                    ("resnet", "batch"): ("#2166ac", "solid"), ("resnet", "none"): ("#1A8573", "dash")}


# ---- per-metric words, from the metric table ----------------------------------------------------------------
def _fact(metric: str, field: str):
    m = METRIC_TABLE.get(metric)
    return getattr(m, field) if m else metric


def axis_title(metric: str) -> str:
    """y-axis (or colour-bar) title of a metric, with its unit; the name itself for a metric not in the table."""
    return _fact(metric, "axis_title")


def figure_title(metric: str) -> str:
    return _fact(metric, "title")


def short_title(metric: str) -> str:
    return _fact(metric, "short_title")


def is_log(metric: str) -> bool:
    """Whether the metric table draws `metric` on a log axis (False for a metric not in the table)."""
    return metric in LOG_METRICS


# ---- runs: order, names, colours ----------------------------------------------------------------------------
def arch_rank(arch: str) -> int:
    """Sort key of an architecture: plain nets first, then ResNets, then anything else."""
    return {"plain": 0, "resnet": 1}.get(str(arch), 2)


def arch_name(arch: str) -> str:
    return {"resnet": "ResNet", "plain": "plain"}.get(str(arch), str(arch))


def source(family: str) -> str:
    """The source of a model in `SYMBOLS`' terms: "timm", "hf", "torchvision" or "other" (first word of family)."""
    first = str(family).split(" ", 1)[0]
    return first if first in SYMBOLS else "other"


def run_symbol(arch: str, family: str = "") -> str:
    """The marker symbol of a run: plain and residual resviz nets apart, each source of other models apart."""
    return SYMBOLS[str(arch)] if is_resviz(str(family), str(arch)) else SYMBOLS[source(family)]


def run_label(arch: str, depth: int, norm: str = "batch", shortcut: str = "A", seed: int = 0, *,
              model: str = "", family: str = "") -> str:
    """Legend label of a run, e.g. "ResNet-56", "plain-20 (norm=layer, seed=1)", "gpt2 (Hugging Face)";
    defaults and anything unknown (a seed of -1, norm "unknown") are left out."""
    if not is_resviz(str(family), str(arch)):
        name = str(model) if str(model) not in MISSING else str(arch)
        where = SOURCES.get(str(family).split(" ", 1)[0], "")
        extra = [where] if where else []
        if int(seed) > 0:
            extra.append(f"seed={seed}")
        return name + (f" ({', '.join(extra)})" if extra else "")
    base = f"{arch_name(arch)}-{depth}" if int(depth) > 0 else arch_name(arch)
    extra = [f"norm={norm}"] if str(norm) not in ("batch", *MISSING) else []
    if str(arch) != "plain" and str(shortcut) not in ("A", *MISSING):
        extra.append(f"shortcut={shortcut}")
    if int(seed) > 0:  # 0 is the default, -1 unknown (an ad-hoc Recorder)
        extra.append(f"seed={seed}")
    return base + (f" ({', '.join(extra)})" if extra else "")


def _rgb(color: str) -> tuple[int, int, int]:
    if color.startswith("rgb"):
        return tuple(int(v) for v in color[color.index("(") + 1:-1].split(",")[:3])
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def contrast(color: str, background: str = "#ffffff") -> float:
    """WCAG contrast ratio of two colours (hex or "rgb(r, g, b)"): 1 (none) to 21."""
    def lum(c):
        ch = [v / 255 for v in _rgb(c)]
        ch = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in ch]
        return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2]
    hi, lo = sorted((lum(color), lum(background)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _mix(color: str, towards: str, amount: float) -> str:
    """`color` moved `amount` (0..1) of the way to `towards` (hex colours), as "rgb(r, g, b)"."""
    (r, g, b), (r2, g2, b2) = (_rgb(c) for c in (color, towards))
    return "rgb({}, {}, {})".format(*(round(x + (y - x) * amount) for x, y in ((r, r2), (g, g2), (b, b2))))


def run_color(arch: str, depth: int, norm: str = "batch", shortcut: str = "A", seed: int = 0, *,
              model: str = "", family: str = "") -> str:
    """The colour of a run in every figure: plain warm, ResNet cool, one clearly different colour per depth;
    any other model a dark colour of its own (by its name).

    Depends only on the run itself (not on the other runs drawn), so figures agree. Runs that differ
    only in norm, shortcut or seed get a small deterministic lighter or darker shift that keeps the colour
    readable on white (`MIN_CONTRAST`; figures that aggregate seeds draw them in the depth's own colour).
    """
    if not is_resviz(str(family), str(arch)):
        name = str(model) if str(model) not in MISSING else str(arch)
        return _OTHER[hashlib.sha1(name.encode()).digest()[0] % len(_OTHER)]
    d = max(int(depth), 1)
    rank = float(np.interp(math.log(d), np.log(_SHADE_DEPTHS), np.arange(len(_SHADE_DEPTHS))))
    color = _PALETTES[str(arch)][int(round(rank))]
    if str(norm) in ("batch", *MISSING) and str(shortcut) in ("A", "none", *MISSING) and int(seed) <= 0:
        return _mix(color, color, 0.0)
    h = hashlib.sha1(f"{norm}|{shortcut}|{seed}".encode()).digest()[0] / 255
    shifted = _mix(color, "#ffffff" if h < 0.5 else "#000000", 0.15 + 0.2 * abs(h - 0.5))
    return shifted if contrast(shifted) >= MIN_CONTRAST else _mix(color, "#000000", 0.15 + 0.2 * abs(h - 0.5))


def label_color(label: str, known: dict[str, str] = VARIANT_COLORS) -> str:
    """A fixed colour for a named variant (any case: "fixup" is "Fixup"); other labels get a palette colour from a
    hash (stable across figures)."""
    lowered = {k.lower(): v for k, v in known.items()}
    if str(label).lower() in lowered:
        return lowered[str(label).lower()]
    return _PALETTE[hashlib.sha1(str(label).encode()).digest()[0] % len(_PALETTE)]


def arch_norm_style(arch: str, norm: str, label: str) -> tuple[str, str]:
    """(colour, dash) of a net drawn by architecture and normalisation (BN solid, no norm dashed); any other pair
    gets `label_color(label)`, dotted."""
    return _ARCH_NORM_STYLE.get((arch, norm), (label_color(label), "dot"))


def short_run_names(ids) -> dict[str, str]:
    """{run_id: the parts of it ("-"-separated) that not all ids share}, e.g. the three runs
    "digits-resnet20-none-scA-{skipinit,rezero,fixup}-w8-s0" -> "skipinit", "rezero", "fixup". Ids are kept
    whole when nothing is shared or the short names would clash."""
    ids = list(dict.fromkeys(map(str, ids)))
    if len(ids) < 2:
        return {i: i for i in ids}
    parts = [i.split("-") for i in ids]
    shared = set(parts[0]).intersection(*map(set, parts[1:]))
    short = {i: "-".join(t for t in p if t not in shared) for i, p in zip(ids, parts)}
    if not shared or "" in short.values() or len(set(short.values())) < len(ids):
        return {i: i for i in ids}
    return short


# ---- hover, captions, layout --------------------------------------------------------------------------------
def hover(metric: str) -> str:
    """Hover template naming the layer; customdata = (layer name, layer index, step)."""
    return (
        "<b>%{customdata[0]}</b><br>index %{customdata[1]} · step %{customdata[2]}<br>"
        f"{metric} = %{{y:.5g}}<extra>%{{fullData.name}}</extra>"
    )


# The dashboard's hover: text = layer name, customdata = layer_index, meta = metric. Numbers only in customdata, so a
# FigureWidget sends them as binary buffers (an object array of (name, index, step) travels as JSON).
WIDGET_HOVER = "<b>%{text}</b><br>index %{customdata}<br>%{meta} = %{y:.5g}<extra>%{fullData.name}</extra>"
MIN_HALF_SPAN = 0.05  # a linear axis spans at least ±5 % of its centre: noise is not blown up to fill the figure
HEATMAP_HALF_SPAN = 0.01  # a heatmap's own colour scale spans at least ±1 % of its centre: structure shows, noise not


def value_axis(values, log: bool, reference: float | None = None) -> dict:
    """y-axis keywords that read cleanly: a log axis labelled at powers of ten only (10^-3, never "100n" or
    minor 2…9 ticks) when the values span a decade; a linear one wide enough to show `reference` and never
    zoomed into noise (at least ±MIN_HALF_SPAN of its centre)."""
    parts = values if isinstance(values, (list, tuple)) else [values]
    v = np.concatenate([np.ravel(np.asarray(x, dtype=np.float64)) for x in parts] or [np.array([np.nan])])
    v = v[np.isfinite(v)]
    if log:
        v = v[v > 0]
        out = dict(type="log", exponentformat="power", showexponent="all", dtick=1)
        if len(v):  # whole decades, so that at least two powers of ten label the axis
            lo, hi = math.floor(np.log10(v.min())), math.ceil(np.log10(v.max()))
            out.update(range=[lo - 0.05, max(hi, lo + 1) + 0.05])
        return out
    if reference is not None:
        v = np.append(v, reference)
    v = v[np.isfinite(v)]
    if not len(v):
        return dict(type="linear")
    lo, hi = widened(float(v.min()), float(v.max()))
    return dict(type="linear", range=[lo, hi], exponentformat="power")


def widened(lo: float, hi: float, least: float = MIN_HALF_SPAN) -> tuple[float, float]:
    """[lo, hi] padded by 10 %, and at least ±`least` (a fraction) of its centre wide."""
    mid = (lo + hi) / 2
    half = max((hi - lo) / 2, least * abs(mid), 1e-12)
    return mid - 1.1 * half, mid + 1.1 * half


def index_axis(max_index: int) -> dict:
    """x-axis keywords of a layer or block index: integer ticks (never 0.5, 1.5)."""
    return dict(tickformat="d", dtick=1 if max_index <= 20 else None, tick0=0)


def customdata(layer: np.ndarray, layer_index: np.ndarray, step: int) -> np.ndarray:
    out = np.empty((len(layer), 3), dtype=object)  # (L, 3)
    out[:, 0], out[:, 1], out[:, 2] = layer, layer_index, step
    return out


def step_text(chosen: list[int], step) -> str:
    """How a title names the step shown: "step 300", or per run when runs were recorded at different steps."""
    if len(set(chosen)) == 1:
        return f"step {chosen[0]}"
    return "each run's last step" if step is None else f"step ≤ {step} per run"


def base_layout(fig: go.Figure, title: str, x: str | None = None, y: str | None = None,
                log_y: bool | None = None) -> go.Figure:
    """The layout every figure shares (template, height, legend, margins), plus its title and axis titles."""
    fig.update_layout(
        template="plotly_white", title=dict(text=title), height=HEIGHT, hovermode="closest",
        legend=dict(title=dict(text="run")), margin=dict(t=70, b=60), showlegend=True,
    )
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    if log_y is not None:
        fig.update_yaxes(type="log" if log_y else "linear")
    return fig
