"""`resviz report RUNS --out DIR`: one self-contained, offline page of every standard figure of some runs.

DIR/index.html loads DIR/plotly.min.js (written once, beside it; never a CDN) and holds:

- a header saying what was run: data sets, steps, seeds, runs and their status, package versions;
- the explorer: any recorded metric against depth, with a metric menu, a depth slider (stepping through the
  depths, or models, present), a training-step slider and a sort toggle. Its data (every run's (steps, layers)
  array per metric, `plots.series.pivot`) sits in the page as JSON; a small script of ours redraws it with
  `Plotly.react`, so the sliders work in any browser with no Jupyter and no server;
- every standard figure (`plots.standard_figures`), interactive (hover names the layer, zoom, pan), each with
  links to its PNG / SVG / PDF in DIR/figures when a browser could render them (`export.export`).
"""
from __future__ import annotations

import dataclasses as dc
import html
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from resviz import export, plots, runs
from resviz.io import atomic_write_bytes, read_json
from resviz.plots.selection import Run
from resviz.plots.series import pivot
from resviz.plots.style import DASHES, REFERENCE, STEP_AXIS, arch_name, axis_title, short_title, x_title
from resviz.schema import LOG_METRICS, METRIC_TABLE, METRICS

STATIC_DEFAULT = ("png", "svg", "pdf")
# How each figure was measured (the page adds data, seeds and steps); keyed by figure name or its prefix.
MODES = {
    "training_curves": "train error: running mini-batch error in train mode on augmented batches; clean train "
                       "error (when recorded): eval mode on a fixed un-augmented training subset; test error: "
                       "eval mode on the test split",
    "response_std": "eval mode on held-out test images where the runs recorded it (response_std_eval), else "
                    "train mode on the current augmented batch: the figure's caption says which",
    "response_std_sorted": "as the response-std figure (eval mode on held-out test images where recorded, else "
                           "train mode: the caption says which), each run's layers sorted by value",
    "response_std_eval": "eval mode (running statistics), a fixed held-out batch of test images",
    "grad_norm": "gradient norms of the loss after backward() on the training batch (weight decay excluded)",
    "act_grad_norm": "loss gradient at each block's output (mean loss: scales with 1/batch size)",
    "branch_skip": "train mode, the current augmented training batch",
    "signal_propagation": "train mode, the current augmented training batch",
    "heatmap": "train mode, every recorded step of one run; one colour scale for all runs",
    "error_vs_depth": "final errors of these runs (mean over seeds); grey: published ResNet test errors on the "
                      "CIFAR-10 test set (He et al.'s ResNet-110: best of 5 runs, with their mean ± std)",
    "explorer": "each metric as recorded (see its meaning below the plot)",
}
MAX_STEPS = 200  # recorded steps per run the explorer's step slider offers (evenly spaced, the last kept)
DIGITS = 5  # significant digits of the explorer's values: enough to tell 0.99994 from 1.0002


@dataclass
class Report:
    """What `write_report` wrote: the page, the figure files, and what was skipped (name -> why)."""

    index: Path
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    static_note: str = ""  # one line when static images were wanted but could not be made


# ---- the explorer's data ---------------------------------------------------------------------------------------
def _rounded(values: np.ndarray) -> list:
    """A float array as JSON-ready nested lists, DIGITS significant digits, NaN -> null."""
    flat = values.astype(np.float64).ravel()
    out = [None if not math.isfinite(v) else float(f"{v:.{DIGITS}g}") for v in flat.tolist()]
    if values.ndim == 2:
        n = values.shape[1]
        return [out[i:i + n] for i in range(0, len(out), n)]
    return out


def thinned(n: int, most: int = MAX_STEPS) -> np.ndarray:
    """Indices of at most `most` of n steps, evenly spaced, first and last kept: the page stays a few MB."""
    return np.arange(n) if n <= most else np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def model_group(run: Run, model: str = "", family: str = "") -> str:
    """The depth slider's stop of a run: its depth for a resviz 6n+2 net, else its model's name (a timm or HF
    model, or any model the Recorder saw), so the slider steps through the models present."""
    if run.depth > 0 and family in ("", "resviz", "nan", "None"):
        return str(run.depth)
    return model if model not in ("", "nan", "None") else arch_name(run.arch)


def _models(stats: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """run_id -> (model, family) from the Recorder's model columns (empty when the table has none)."""
    if "model" not in stats.columns or "run_id" not in stats.columns:
        return {}
    cols = ["run_id", "model"] + (["family"] if "family" in stats.columns else [])
    first = stats[cols].astype(str).drop_duplicates("run_id")
    return {r[0]: (r[1], r[2] if len(r) > 2 else "") for r in first.itertuples(index=False)}


def _group_order(labels) -> list[str]:
    return sorted(set(labels), key=lambda g: (0, int(g), g) if g.isdigit() else (1, 0, g))


def explorer_data(stats: pd.DataFrame) -> dict:
    """Everything the page's explorer draws: metrics (words from schema.METRIC_TABLE), depth stops, series."""
    data = pivot(stats)
    if not data:
        raise ValueError("the runs have no per-layer statistics to explore; record some with resviz train")
    order = [m for m in METRICS if m in data] + sorted(set(data) - set(METRICS))
    metrics = [dict(name=m, title=short_title(m), axis=axis_title(m), log=m in LOG_METRICS,
                    x=x_title(m), ref=REFERENCE.get(m),
                    meaning=METRIC_TABLE[m].meaning if m in METRIC_TABLE else m) for m in order]
    series, models = [], _models(stats)
    for m in order:
        for s in data[m]:
            keep = thinned(len(s.steps))
            s = dc.replace(s, steps=s.steps[keep], values=s.values[keep])
            series.append(dict(
                metric=m, group=model_group(s.run, *models.get(s.run.run_id, ("", ""))),
                name=s.run.label + (f" · {s.part}" if s.part else ""),
                color=s.run.color, dash=DASHES[s.part_no % len(DASHES)],
                steps=[int(v) for v in s.steps], x=[int(v) for v in s.layer_index],
                layer=[str(v) for v in s.layer], y=_rounded(s.values)))
    groups = _group_order(d["group"] for d in series)
    template = pio.templates["plotly_white"].to_plotly_json()  # the figures' look, resolved (plotly.js has no names)
    first = next((m for m in ("response_std_eval", "response_std") if m in data), order[0])  # Fig. 7, eval if recorded
    return dict(metrics=metrics, groups=groups, series=series, step_axis=STEP_AXIS, template=template,
                first=first)


# ---- the header: what was run --------------------------------------------------------------------------------
def _configs(status: pd.DataFrame) -> list[dict]:
    out = []
    for folder in status.get("folder", pd.Series([], dtype=object)).astype(str):
        try:
            cfg = read_json(Path(folder) / "config.json")
        except Exception:  # noqa: BLE001 - the header says less, the report is still written
            cfg = {}
        out.append(cfg if isinstance(cfg, dict) else {})
    return out


def _joined(values) -> str:
    vals = sorted({str(v) for v in values if v not in (None, "", -1)}, key=lambda v: (len(v), v))
    return ", ".join(vals) or "unknown"


def run_facts(runset) -> dict[str, str]:
    """The header's lines: data, steps, seeds, runs by status, versions (from each run's config.json)."""
    status, configs = runset.status, _configs(runset.status)
    versions: dict[str, set] = {}
    for cfg in configs:
        for k, v in (cfg.get("versions") or {}).items():
            versions.setdefault(str(k), set()).add(str(v))
    counts = status["status"].astype(str).value_counts() if len(status) else pd.Series(dtype=int)
    return {
        "data": _joined(status.get("dataset", [])),
        "steps": _joined(status.get("steps", [])),
        "seeds": _joined(status.get("seed", [])),
        "runs": f"{len(status)} ({', '.join(f'{n} {s}' for s, n in counts.items())})",
        "versions": "; ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())) or "unknown",
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def caption(facts: dict[str, str]) -> str:
    """What every figure of the page measured: data, seeds, steps (a figure adds its mode)."""
    return f"data: {facts['data']} · seeds: {facts['seeds']} · steps: {facts['steps']}"


def _runs_table(runset) -> str:
    cols = ["run_id", "arch", "depth", "norm", "seed", "status", "step", "steps", "reason"]
    rows = runset.status.reindex(columns=cols)
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows.itertuples(index=False))
    return f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def header_html(runset, facts: dict[str, str]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items())
    return (f'<header><h1>resviz report</h1><dl class="facts">{items}</dl>'
            f"<details><summary>runs</summary>{_runs_table(runset)}</details></header>")


# ---- the page ------------------------------------------------------------------------------------------------
def mode_of(name: str) -> str:
    if name in MODES:
        return MODES[name]
    return next((v for k, v in MODES.items() if name.startswith(k)), "as recorded")


def _json_script(obj) -> str:
    """JSON safe inside <script type="application/json">: no "</" can close the element."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def explorer_html(data: dict, facts: dict[str, str]) -> str:
    return f"""<section id="explorer-section"><h2>Explorer: any metric against depth</h2>
<div class="controls">
 <label>metric <select id="rv-metric"></select></label>
 <label>depth <input id="rv-depth" type="range" min="0" max="0" step="1" value="0"> <b id="rv-depth-label"></b></label>
 <label>step <input id="rv-step" type="range" min="0" max="0" step="1" value="0"> <b id="rv-step-label"></b></label>
 <label><input id="rv-sort" type="checkbox"> sorted (He et al. Fig. 7, bottom)</label>
</div>
<div id="rv-explorer" class="figure" style="height:520px"></div>
<p class="caption" id="rv-caption"></p>
<p class="caption">{html.escape(caption(facts))}. Use the arrow keys on a slider to step through depths and
steps; hover a point for its layer.</p>
<script type="application/json" id="resviz-explorer-data">{_json_script(data)}</script>
</section>"""


def figure_html(name: str, fig: go.Figure, facts: dict[str, str], files: dict[str, Path], page: Path) -> str:
    div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{name}",
                      config={"responsive": True, "displaylogo": False})
    links = " ".join(f'<a href="{html.escape(os.path.relpath(p, page.parent))}">{fmt.upper()}</a>'
                     for fmt, p in sorted(files.items()))
    cap = f"{mode_of(name)}; {caption(facts)}"
    return (f'<section class="fig" id="{html.escape(name)}"><h2>{html.escape(name.replace("_", " "))}</h2>{div}'
            f'<p class="caption">{html.escape(cap)}{(" · download: " + links) if links else ""}</p></section>')


def page_html(head: str, explorer: str, figures: list[str], notes: list[str]) -> str:
    skipped = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>resviz report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{PAGE_CSS}</style>
<script src="plotly.min.js"></script></head>
<body>{head}
{explorer}
{''.join(figures)}
{f'<section><h2>not drawn</h2><ul>{skipped}</ul></section>' if skipped else ''}
{f'<script>{EXPLORER_JS}</script>' if explorer else ''}
</body></html>"""


PAGE_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
.controls{display:flex;flex-wrap:wrap;gap:1.2em;align-items:center;margin:.5em 0}
.caption{color:#555;font-size:.9em}table.runs{border-collapse:collapse;font-size:.85em}
table.runs td,table.runs th{border:1px solid #ddd;padding:2px 6px}section{margin-top:2em}"""

# The explorer: redraws one metric of the runs at one depth stop and one step with Plotly.react.
EXPLORER_JS = r"""(function () {
const D = JSON.parse(document.getElementById('resviz-explorer-data').textContent);
const $ = id => document.getElementById(id);
const metricSel = $('rv-metric'), depthIn = $('rv-depth'), stepIn = $('rv-step'), sortBox = $('rv-sort');
let groups = [], steps = [];
D.metrics.forEach(m => { const o = document.createElement('option'); o.value = m.name; o.textContent = m.title;
  metricSel.appendChild(o); });
const metric = () => D.metrics.find(m => m.name === metricSel.value);
const seriesOf = (name, g) => D.series.filter(s => s.metric === name && (g === null || s.group === g));
const rowAt = (s, step) => { let r = 0; s.steps.forEach((t, k) => { if (t <= step) r = k; }); return r; };
function setMetric() {
  const keep = groups[+depthIn.value], have = new Set(seriesOf(metricSel.value, null).map(s => s.group));
  groups = D.groups.filter(g => have.has(g));
  depthIn.max = groups.length - 1; depthIn.value = Math.max(groups.indexOf(keep), 0);
  depthIn.disabled = groups.length < 2; setGroup();
}
function setGroup() {
  const keep = steps.length ? steps[+stepIn.value] : null, all = new Set();
  seriesOf(metricSel.value, groups[+depthIn.value]).forEach(s => s.steps.forEach(t => all.add(t)));
  const wasLast = steps.length === 0 || +stepIn.value === steps.length - 1;
  steps = Array.from(all).sort((a, b) => a - b);
  let j = steps.length - 1;
  if (!wasLast && keep !== null) { j = 0; steps.forEach((t, k) => { if (t <= keep) j = k; }); }
  stepIn.max = steps.length - 1; stepIn.value = j; stepIn.disabled = steps.length < 2; draw();
}
function yRange(ys, ref) {
  const v = ys.flat().filter(y => y !== null && isFinite(y)); if (ref !== null) v.push(ref);
  if (!v.length) return undefined;
  const lo = Math.min(...v), hi = Math.max(...v), mid = (lo + hi) / 2;
  const half = Math.max((hi - lo) / 2, 0.05 * Math.abs(mid), 1e-12);  // never zoomed into noise (plots.style)
  return [mid - 1.1 * half, mid + 1.1 * half];
}
function draw() {
  const m = metric(), g = groups[+depthIn.value], step = steps[+stepIn.value], sort = sortBox.checked;
  const traces = seriesOf(m.name, g).map(s => {
    let y = s.y[rowAt(s, step)], names = s.layer, idx = s.x, x = s.x;
    if (sort) {
      const o = y.map((_, i) => i).sort((a, b) => (y[b] ?? -Infinity) - (y[a] ?? -Infinity));
      y = o.map(i => y[i]); names = o.map(i => s.layer[i]); idx = o.map(i => s.x[i]); x = o.map((_, k) => k + 1);
    }
    return {x: x, y: y, text: names, customdata: idx, meta: m.name, type: 'scatter', mode: 'lines+markers',
      name: s.name, line: {color: s.color, dash: s.dash, width: 2}, marker: {size: 4},
      hovertemplate: '<b>%{text}</b><br>index %{customdata}<br>%{meta} = %{y:.5g}<extra>%{fullData.name}</extra>'};
  });
  const ref = m.ref === undefined ? null : m.ref;
  const gl = /^\d+$/.test(g) ? 'depth ' + g : g;
  $('rv-depth-label').textContent = gl; $('rv-step-label').textContent = String(step);
  $('rv-caption').textContent = m.title + ': ' + m.meaning
    + (ref !== null ? ' · dotted line: value at initialisation (' + ref + ')' : '');
  const pos = traces.map(t => t.y).flat().filter(y => y !== null && y > 0);
  const decades = pos.length ? [Math.floor(Math.log10(Math.min(...pos))), Math.ceil(Math.log10(Math.max(...pos)))]
    : null;
  const yaxis = m.log ? {type: 'log', dtick: 1, exponentformat: 'power', title: {text: m.axis},
      range: decades ? [decades[0] - 0.05, Math.max(decades[1], decades[0] + 1) + 0.05] : undefined}
    : {type: 'linear', range: yRange(traces.map(t => t.y), ref), exponentformat: 'power', title: {text: m.axis}};
  const layout = {template: D.template, height: 520, hovermode: 'closest', margin: {t: 60, b: 60},
    title: {text: m.title + (sort ? ' (sorted)' : '') + ' — ' + gl + ', step ' + step},
    xaxis: {title: {text: sort ? 'rank (sorted, descending)' : m.x}, tickformat: 'd',
      dtick: Math.max(...traces.map(t => t.x.length)) <= 21 ? 1 : undefined},
    yaxis: yaxis, legend: {title: {text: 'run'}},
    shapes: ref === null ? [] : [{type: 'line', xref: 'paper', x0: 0, x1: 1, y0: ref, y1: ref,
      line: {color: '#888', dash: 'dot', width: 1}}]};
  Plotly.react('rv-explorer', traces, layout, {responsive: true, displaylogo: false});
}
metricSel.addEventListener('change', setMetric); depthIn.addEventListener('input', setGroup);
stepIn.addEventListener('input', draw); sortBox.addEventListener('change', draw);
metricSel.value = D.first; setMetric();
})();"""


# ---- writing ---------------------------------------------------------------------------------------------------
def _static_files(figs: dict[str, go.Figure], out: Path, static: tuple[str, ...], required: bool):
    """{name: {fmt: path}} of the PNG/SVG/PDF written in out/figures, and a one-line note when skipped.
    Raises the export's error when `required` (the user asked for these formats by name)."""
    if not static or not figs:
        return {}, ""
    if export.find_browser() is None and not required:
        return {}, (f"{'/'.join(static).upper()} not written: no Chrome/Chromium found; {export.INSTALL_HINT} "
                    "(or `plotly_get_chrome` with internet access), then rerun resviz report")
    paths = export.export(figs, out / "figures", static)
    found: dict[str, dict[str, Path]] = {}
    for p in paths:
        found.setdefault(p.stem, {})[p.suffix.lstrip(".")] = p
    return found, ""


def write_report(runs_or_path, out: str | os.PathLike, *, static: tuple[str, ...] | None = None,
                 step: int | None = None, auto_static: tuple[str, ...] = STATIC_DEFAULT) -> Report:
    """Write out/index.html (+ out/plotly.min.js, + out/figures/*.png|svg|pdf) for a run folder, glob or RunSet.

    `static=None` writes `auto_static` (PNG, SVG and PDF) when a browser is found and says in
    `Report.static_note` why not otherwise; formats named explicitly must be made (BrowserNotFoundError otherwise).
    """
    runset = runs.load(runs_or_path) if isinstance(runs_or_path, (str, os.PathLike, list)) else runs_or_path
    if len(runset) == 0:
        raise FileNotFoundError(f"no run folders in {runs_or_path}: a run folder holds config.json "
                                "(resviz train writes one)")
    required = static is not None
    static = tuple(f for f in export.parse_formats(static) if f in export.STATIC_FORMATS) if required else auto_static
    out = export.prepare_folder(out)
    figs, skipped = plots.standard_figures(runset.stats, runset.metrics if len(runset.metrics) else None, step=step)
    facts = run_facts(runset)
    try:
        data = explorer_data(runset.stats)
    except ValueError as err:
        data, skipped["explorer"] = None, str(err)
    if not figs and data is None:
        raise ValueError(f"no figure to draw for {runs_or_path}: the runs have no training rows or statistics yet")
    index = out / "index.html"
    notes = [f"{k}: {v}" for k, v in skipped.items()]

    def page(files: dict) -> bytes:
        sections = [figure_html(n, f, facts, files.get(n, {}), index) for n, f in figs.items()]
        return page_html(header_html(runset, facts), explorer_html(data, facts) if data else "", sections,
                         notes).encode()

    written = [atomic_write_bytes(out / "plotly.min.js", export.plotlyjs_bytes()), atomic_write_bytes(index, page({}))]
    files, note = _static_files(figs, out, static, required)  # the page is there even when this raises
    if files:
        atomic_write_bytes(index, page(files))
    return Report(index, written + [p for d in files.values() for p in d.values()], skipped, note)
