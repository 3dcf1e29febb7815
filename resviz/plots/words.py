"""What every figure says: titles, axis titles, captions, reference lines and seed counts, composed from two
sources only: the metric table (`resviz.schema.METRIC_TABLE`: a metric's level, unit, meaning, mode, reference
value, literature) and the run metadata recorded with the rows (`Facts`: families, norm kinds, seeds, the names
of the residual adds). No figure function writes a sentence about a model; the few facts about model families
that are not in the rows (what starts a branch at zero) are the table `ZERO_INIT` here.

    facts(frame)                       the model facts of the runs in a stats table
    depth_title(metric, facts)         x-axis title: the unit of depth the metric's rows count
    title(metric, facts)               figure title, with the norm kind where one is recorded
    reference(metric)                  (value, what it is) of the dotted line, or None
    caption(metric, rows, facts, ...)  the lines under a figure: mode, step 0, seeds, reference, literature, notes
    oddities(metric, rows, facts)      one line each for what looks like a bug: zero-initialised, frozen, constant
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from resviz.schema import LEVELS, METRIC_TABLE

MISSING = frozenset({"", "unknown", "nan", "None", "-1"})  # metadata that says nothing: never printed
NORM_NAMES = {"batch": "BatchNorm", "layer": "LayerNorm", "group": "GroupNorm", "rms": "RMSNorm",
              "instance": "InstanceNorm"}
# Where a model comes from, in words, by the first word of the Recorder's `family` column.
SOURCES = {"resviz": "resviz", "timm": "timm", "hf": "Hugging Face", "torchvision": "torchvision"}
# What starts a branch (or a norm scale) at exactly zero, by family prefix; the first match is said.
ZERO_INIT = (
    ("timm resnet", "timm's zero_init_last sets each block's last norm scale γ to 0: the branch adds nothing and "
                    "passes no gradient back until γ moves"),
    ("resviz", "a zero-initialised branch (SkipInit and ReZero set α to 0, Fixup its last layer's weights) adds "
               "nothing until it moves"),
    ("", "a zero-initialised branch or norm scale (e.g. timm's zero_init_last, SkipInit, ReZero, Fixup) adds "
         "nothing until it moves"),
)
REFERENCE_LINE = dict(color="#666", dash="dot", width=1)
CAPTION_GAP = 55  # px from the plot area's bottom to the caption: below the x-axis title


@dataclass(frozen=True)
class Facts:
    """What the recorded metadata says about the runs drawn together (unknown values left out)."""

    families: tuple[str, ...] = ()  # the Recorder's `family`: "resviz", "timm resnet", "hf gpt2", ...
    norms: tuple[str, ...] = ()  # recorded norm kinds: "batch", "layer", ...
    seeds: tuple[int, ...] = ()  # recorded seeds (>= 0)
    adds: tuple[str, ...] = ()  # names of the residual adds inside one block, when it has several: ("attn", "mlp")
    bn_cifar: bool = False  # every run is a resviz CIFAR net (plain or ResNet) with BatchNorm

    @property
    def norm_name(self) -> str:
        """The norm kind in words when all runs share one ("BatchNorm"), else ""."""
        return NORM_NAMES.get(self.norms[0], "") if len(self.norms) == 1 else ""


def known(values) -> list[str]:
    return [v for v in dict.fromkeys(map(str, values)) if v not in MISSING]


def add_names(layers) -> tuple[str, ...]:
    """The names of a block's residual adds ("attn", "mlp") from block-level layer names such as
    "transformer.h.3.attn" or "blocks.0.mlp.probe_branch"; () when some block has one add (its name ends in a
    number), as in a ResNet or a figure that mixes ResNets and transformers."""
    tails = list(dict.fromkeys(re.sub(r"\.probe_\w+$", "", str(n)).rsplit(".", 1)[-1] for n in layers))
    if any(t.isdigit() or not t for t in tails):  # some blocks have one unnamed add (a ResNet): no common names
        return ()
    return tuple(tails) if 1 < len(tails) <= 4 else ()


def is_resviz(family: str, arch: str) -> bool:
    """A resviz CIFAR net: the Recorder's family says so, or (older tables) the arch is resviz's."""
    return family == "resviz" or (family in MISSING and arch in ("plain", "resnet"))


def run_facts(runs, layers=()) -> Facts:
    """The facts of some runs (anything with family, arch, norm and seed attributes: `selection.Run`), with the
    add names read from the block-level layer names drawn (`layers`)."""
    runs = list(runs)
    seeds = sorted({int(r.seed) for r in runs} - {-1})
    bn_cifar = bool(runs) and all(is_resviz(str(r.family), str(r.arch)) and str(r.norm) == "batch" for r in runs)
    return Facts(tuple(known(r.family for r in runs)), tuple(known(r.norm for r in runs)), tuple(seeds),
                 add_names(layers), bn_cifar)


@dataclass(frozen=True)
class _RunRow:
    arch: str
    family: str
    norm: str
    seed: int


def facts(frame: pd.DataFrame) -> Facts:
    """The model facts of every run in a stats (or training) table."""
    if frame is None or not len(frame):
        return Facts()
    cols = [c for c in ("arch", "family", "norm", "seed") if c in frame.columns]
    uniq = frame[cols].astype({c: str for c in cols if c != "seed"}).drop_duplicates()
    runs = [_RunRow(getattr(r, "arch", ""), getattr(r, "family", ""), getattr(r, "norm", ""),
                    int(getattr(r, "seed", -1))) for r in uniq.itertuples(index=False)]
    block = frame[frame["metric"].astype(str).isin(["branch_ratio", "branch_std"]).to_numpy()] \
        if "metric" in frame.columns and "layer" in frame.columns else frame.iloc[:0]
    return run_facts(runs, pd.unique(block["layer"].astype(str)) if len(block) else ())


# ---- titles and axes ------------------------------------------------------------------------------------------
def depth_unit(metric: str) -> str:
    m = METRIC_TABLE.get(metric)
    return m.depth_unit if m else "layer"


def depth_title(metric: str, f: Facts = Facts()) -> str:
    """x-axis title of a metric against depth: the unit its rows count ("norm layer", "residual add",
    "parameter tensor"), with the add names where a block has several."""
    m = METRIC_TABLE.get(metric)
    unit = m.depth_unit if m else "layer"
    if m is not None and m.level == "layer" and f.norm_name:
        unit = f"{unit} ({f.norm_name})"
    text = f"{unit} index along depth (0 = first)"
    if m is not None and m.level == "block" and f.adds:
        text = f"{unit} index along depth (0 = first; each block adds {', then '.join(f.adds)})"
    if m is not None and m.level == "param":
        text = f"{unit} index in model order (0 = first parameter)"
    return text


def title(metric: str, f: Facts = Facts()) -> str:
    """A metric's figure title from the table, with the norm kind for a norm-layer metric when it is recorded."""
    m = METRIC_TABLE.get(metric)
    if m is None:
        return metric
    return f"{m.title} ({f.norm_name})" if m.level == "layer" and f.norm_name else m.title


def reference(metric: str) -> tuple[float, str] | None:
    """(value, what it is) of a metric's reference line, or None when the metric has none."""
    m = METRIC_TABLE.get(metric)
    if m is None or m.reference is None:
        return None
    return m.reference, m.reference_meaning


def reference_shape(metric: str) -> list[dict]:
    """The dotted reference line of a metric as layout shapes ([] when it has none): one across the plot."""
    ref = reference(metric)
    if ref is None:
        return []
    return [dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=ref[0], y1=ref[0], line=REFERENCE_LINE,
                 layer="below")]


def seeds_text(seeds) -> str:
    """"one seed (0)", "3 seeds (0, 1, 2)"; "" when no seed is recorded."""
    s = sorted({int(v) for v in seeds} - {-1})
    if not s:
        return ""
    return f"one seed ({s[0]})" if len(s) == 1 else f"{_count(len(s))} seeds ({', '.join(map(str, s))})"


def _count(n: int) -> str:
    return ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")[n] if n <= 10 \
        else str(n)


def count_text(n: int, noun: str) -> str:
    """ "one seed", "3 seeds" in words up to ten."""
    return f"{_count(n)} {noun}{'' if n == 1 else 's'}"


# ---- captions ---------------------------------------------------------------------------------------------------
def zero_cause(f: Facts) -> str:
    family = f.families[0] if len(f.families) == 1 else ""
    return next(text for prefix, text in ZERO_INIT if family.startswith(prefix))


def _per_unit(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per (run, layer): its first step shown and its value there, and whether it is 0 / not finite at every step."""
    key = np.full(len(rows), "", dtype=object)
    for c in ("run_id", "layer"):
        if c in rows.columns:
            key = key + "\0" + rows[c].astype(str).to_numpy(dtype=object)
    codes = pd.factorize(key)[0]
    step, value = rows["step"].to_numpy(np.int64), rows["value"].to_numpy(np.float64)
    order = np.lexsort((step, codes))
    _, start = np.unique(codes[order], return_index=True)
    value, step = value[order], step[order]
    return dict(first_step=step[start], first=value[start], zero=np.logical_and.reduceat(value == 0, start),
                nan=np.logical_and.reduceat(~np.isfinite(value), start))


def oddities(metric: str, rows: pd.DataFrame, f: Facts = Facts()) -> list[str]:
    """One line each for what looks like a bug and is not, in the rows shown (run_id, layer, step, value): a
    metric identically 0 or constant, parameters with no gradient (frozen), units exactly 0 at the first step
    shown (at step 0: a zero-initialised branch or norm scale, said by `zero_cause`)."""
    if rows is None or not len(rows) or "value" not in rows.columns:
        return []
    m = METRIC_TABLE.get(metric)
    name, unit = (m.short_title if m else metric), depth_unit(metric)
    finite = rows["value"].to_numpy(np.float64)
    finite = finite[np.isfinite(finite)]
    shown = "recorded step and " if rows["step"].nunique() > 1 else ""
    if len(finite) > 1 and np.all(finite == 0):
        return [f"{name} is exactly 0 at every {shown}{unit}. At initialisation, {zero_cause(f)}."]
    if len(finite) > 1 and np.all(finite == finite[0]):
        return [f"{name} is {finite[0]:.4g} at every {shown}{unit} shown: constant, not a plotting error."]
    per = _per_unit(rows)
    n, out = len(per["first"]), []
    if m is not None and m.level == "param" and metric.startswith("grad") and per["nan"].any():
        out.append(f"{_of(int(per['nan'].sum()), n, unit)} no gradient at any step shown: frozen "
                   "(requires_grad=False) or unused by the loss.")
    start = int(per["first_step"].min())
    zero = int(((per["first"] == 0) & (per["first_step"] == start)).sum())
    if zero:
        log = " (a log axis cannot draw 0)" if m is not None and m.log_scale else ""
        out.append(f"{_of(zero, n, unit)} exactly 0 at step {start}{log}. At initialisation, {zero_cause(f)}.")
    return out


def _of(k: int, n: int, unit: str) -> str:
    """ "One of 11 norm layers is", "Four of 11 norm layers are"."""
    words_k = _count(k) if k <= 10 else str(k)
    return f"{words_k[0].upper()}{words_k[1:]} of {n} {unit}s {'is' if k == 1 else 'are'}"


def caption(metric: str, rows: pd.DataFrame, f: Facts, *, steps=(), reference_drawn: bool = False,
            extra: tuple[str, ...] = (), notes: tuple[str, ...] = (), literature: bool = True) -> str:
    """The lines under a figure of `metric`: how it was measured, how step 0 was (when shown), the seeds, the
    reference line (when drawn), the literature (when `literature`, and only for BatchNorm CIFAR nets),
    `oddities`, and `notes` (the oddities of the other metrics of the figure); a zero-initialisation cause is
    said once."""
    m = METRIC_TABLE.get(metric)
    lines = [f"Measured: {m.measured}." if m else f"{metric} as recorded."]
    if m is not None and m.first_step and 0 in set(map(int, steps)):
        lines.append(f"Step 0: {m.first_step}.")
    lines.extend(extra)
    seeds = seeds_text(f.seeds)
    if seeds:
        lines.append(f"Runs of {seeds}.")
    ref = reference(metric)
    if reference_drawn and ref is not None:
        lines.append(f"Dotted line at {ref[0]:g}: {ref[1]}.")
    if literature and m is not None and m.literature and f.bn_cifar:
        lines.append(f"Reference, {m.literature}.")
    lines.extend(oddities(metric, rows, f))
    return "<br>".join(_once([*lines, *notes]))


def _once(lines: list[str]) -> list[str]:
    """The lines with each sentence that starts "At initialisation," said only the first time."""
    seen, out = set(), []
    for line in dict.fromkeys(lines):
        head, sep, cause = line.partition(" At initialisation, ")
        out.append(head if sep and cause in seen else line)
        if sep:
            seen.add(cause)
    return out


def add_caption(fig, text: str, *, lines: int | None = None):
    """The caption under a figure, as an annotation named "caption" (the report moves it below the figure,
    so it is printed once) with room made for it."""
    n = lines if lines is not None else text.count("<br>") + 1
    fig.add_annotation(text=text, name="caption", xref="paper", yref="paper", x=0, y=0, yshift=-CAPTION_GAP,
                       xanchor="left", yanchor="top", showarrow=False, font=dict(size=11, color="#444"), align="left")
    bottom = CAPTION_GAP + 20 + 16 * n
    height = (fig.layout.height or 500) + 16 * n
    return fig.update_layout(margin=dict(b=bottom), height=height)


__all__ = ["Facts", "LEVELS", "MISSING", "NORM_NAMES", "REFERENCE_LINE", "SOURCES", "ZERO_INIT", "add_caption",
           "add_names", "caption", "count_text", "depth_title", "depth_unit", "facts", "is_resviz", "known",
           "oddities", "reference", "reference_shape", "run_facts", "seeds_text", "title", "zero_cause"]
