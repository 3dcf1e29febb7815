"""`resviz report RUNS --out DIR`: one self-contained, offline page of every standard figure of some runs.

DIR/index.html loads DIR/plotly.min.js (written once, beside it; never a CDN) and holds:

- a header saying what was run: data sets, steps, seeds, runs and their status, package versions;
- the explorer: any recorded metric against depth, with a metric menu, a depth slider (stepping through the
  depths, or models, present), a training-step slider and a sort toggle. Every position of the controls is a
  figure drawn in Python beforehand by the same functions as the static figures (`plots.depth.profile_traces`,
  `profile_axes`, `profile_caption`, on `plots.series.pivot`), stored in the page as JSON (repeated arrays
  stored once); the page's script only picks the one the controls name and hands it to `Plotly.react`, so the
  sliders work in any browser with no Jupyter and no server, and a curve is defined in one place;
- every standard figure (`plots.standard_figures`) as a section: its title as the heading (which names the step
  once), the figure (interactive: hover names the layer, zoom, pan), its caption once below it, and links to its
  PNG / SVG / PDF in DIR/figures when a browser could render them (`export.export`).
"""
from __future__ import annotations

import html
import json
import math
import os
import shlex
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from resviz import export, plots, runs
from resviz.io import atomic_write_bytes, read_json
from resviz.plots import words
from resviz.plots.depth import profile_axes, profile_caption, profile_traces
from resviz.plots.selection import Profile, Run
from resviz.plots.series import pivot
from resviz.plots.style import arch_name, base_layout, short_title
from resviz.schema import METRICS

STATIC_DEFAULT = ("png", "svg", "pdf")
MAX_STEPS = 100  # recorded steps per run the explorer's step slider offers (evenly spaced, the last kept)
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
    """A float array as a JSON-ready list, DIGITS significant digits, NaN and inf -> null."""
    return [None if not math.isfinite(v) else float(f"{v:.{DIGITS}g}") for v in np.ravel(values).tolist()]


def thinned(n: int, most: int = MAX_STEPS) -> np.ndarray:
    """Indices of at most `most` of n steps, evenly spaced, first and last kept: the page stays a few MB."""
    return np.arange(n) if n <= most else np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def model_group(run: Run, model: str = "", family: str = "") -> str:
    """The depth slider's stop of a run: its depth for a resviz 6n+2 net, else its model's name (a timm or HF
    model, or any model the Recorder saw), so the slider steps through the models present."""
    model, family = model or run.model, family or run.family
    if run.depth > 0 and family in ("", "resviz", "nan", "None", "unknown"):
        return str(run.depth)
    return model if model not in ("", "nan", "None", "unknown") else arch_name(run.arch)


def _group_order(labels) -> list[str]:
    return sorted(set(labels), key=lambda g: (0, int(g), g) if g.isdigit() else (1, 0, g))


class _Pool:
    """Arrays stored once in the page: a trace field that repeats (layer names, x) becomes {"$": k}."""

    def __init__(self):
        self.items: list = []
        self._index: dict[str, int] = {}

    def ref(self, values) -> dict:
        key = json.dumps(values, separators=(",", ":"))
        if key not in self._index:
            self._index[key] = len(self.items)
            self.items.append(values)
        return {"$": self._index[key]}


def _trace(t: dict, pool: _Pool) -> dict:
    """A trace of `profile_traces` as JSON: its arrays in the pool, y rounded."""
    out = {k: v for k, v in t.items() if k not in ("x", "y", "text", "customdata")}
    out.update(type="scatter", y=pool.ref(_rounded(np.asarray(t["y"], dtype=np.float64))),
               x=pool.ref([int(v) for v in t["x"]]), text=pool.ref([str(v) for v in t["text"]]),
               customdata=pool.ref([int(v) for v in t["customdata"]]))
    return out


def _frame(profs: list[Profile], metric: str, step: int, sort: bool, caption: str, pool: _Pool) -> dict:
    """One position of the explorer: the traces and axes the Python figure of these profiles has."""
    traces = [_trace(t, pool) for t in profile_traces(profs, metric, sort=sort, widget_hover=True)]
    layout = profile_axes(profs, metric, sort=sort, step=step)
    return dict(data=traces, layout=layout, caption=caption.replace("<br>", "\n"))


def _view(series: list, metric: str, pool: _Pool) -> dict:
    """Every step of one metric at one depth stop: {steps, frames: [[unsorted, sorted] per step]}."""
    steps = np.unique(np.concatenate([s.steps for s in series]))
    steps = steps[thinned(len(steps))]
    frames = []
    for step in steps.tolist():
        profs = [s.profile(step) for s in series]
        caption = profile_caption(profs, metric)
        frames.append([_frame(profs, metric, step, sort, caption, pool) for sort in (False, True)])
    return dict(steps=steps.tolist(), frames=frames)


def explorer_data(stats: pd.DataFrame) -> dict:
    """Everything the page's explorer shows, drawn beforehand: per metric (words from the metric table) and depth
    stop, one frame per recorded step and sort order (`_view`), and the page's shared layout."""
    data = pivot(stats)
    if not data:
        raise ValueError("the runs have no per-layer statistics to explore; record some with resviz train")
    order = [m for m in METRICS if m in data] + sorted(set(data) - set(METRICS))
    pool, views = _Pool(), {}
    for m in order:
        stops: dict[str, list] = {}
        for s in data[m]:
            stops.setdefault(model_group(s.run), []).append(s)
        views[m] = {g: _view(stops[g], m, pool) for g in _group_order(stops)}
    groups = _group_order(g for v in views.values() for g in v)
    layout = base_layout(go.Figure(), "").layout.to_plotly_json()  # the figures' look, template resolved
    metrics = [dict(name=m, title=short_title(m)) for m in order]
    first = next((m for m in ("response_std_eval", "response_std") if m in data), order[0])  # Fig. 7 first
    return dict(metrics=metrics, groups=groups, views=views, pool=pool.items, layout=layout, first=first)


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
    vals = sorted({str(v) for v in values if str(v) not in words.MISSING}, key=lambda v: (len(v), v))
    return ", ".join(vals)


def run_facts(runset) -> dict[str, str]:
    """The header's lines: data, steps, seeds (in words), runs by status, versions (from each run's config.json);
    a line with nothing recorded is left out."""
    status, configs = runset.status, _configs(runset.status)
    versions: dict[str, set] = {}
    for cfg in configs:
        for k, v in (cfg.get("versions") or {}).items():
            versions.setdefault(str(k), set()).add(str(v))
    counts = status["status"].astype(str).value_counts() if len(status) else pd.Series(dtype=int)
    seeds = [int(v) for v in status.get("seed", []) if str(v) not in words.MISSING]
    facts = {
        "data": _joined(status.get("dataset", [])),
        "steps": _joined(status.get("steps", [])),
        "seeds": words.seeds_text(seeds),
        "runs": f"{len(status)} ({', '.join(f'{n} {s}' for s, n in counts.items())})",
        "versions": "; ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return {k: v for k, v in facts.items() if v}


def _runs_table(runset) -> str:
    cols = ["run_id", "arch", "depth", "norm", "seed", "status", "step", "steps", "reason"]
    rows = runset.status.reindex(columns=cols)
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>"
                   for r in rows.itertuples(index=False))
    return f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value) -> str:
    return "" if str(value) in words.MISSING else str(value)


def header_html(runset, facts: dict[str, str]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items())
    return (f'<header><h1>resviz report</h1><dl class="facts">{items}</dl>'
            f"<details><summary>runs</summary>{_runs_table(runset)}</details></header>")


# ---- the page ------------------------------------------------------------------------------------------------
def _json_script(obj) -> str:
    """JSON safe inside <script type="application/json">: no "</" can close the element."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def explorer_html(data: dict) -> str:
    return f"""<section id="explorer-section"><h2>Explorer: any metric against depth</h2>
<div class="controls">
 <label>metric <select id="rv-metric"></select></label>
 <label>depth <input id="rv-depth" type="range" min="0" max="0" step="1" value="0"> <b id="rv-depth-label"></b></label>
 <label>step <input id="rv-step" type="range" min="0" max="0" step="1" value="0"> <b id="rv-step-label"></b></label>
 <label><input id="rv-sort" type="checkbox"> sorted, largest first</label>
</div>
<div id="rv-explorer" class="figure" style="height:520px"></div>
<p class="caption" id="rv-caption"></p>
<p class="caption">Use the arrow keys on a slider to step through depths (or models) and steps; hover a point
for its layer.</p>
<script type="application/json" id="resviz-explorer-data">{_json_script(data)}</script>
</section>"""


def split_figure(fig: go.Figure) -> tuple[go.Figure, str, str]:
    """(the figure without its title and caption, its title, its caption): the page prints title and caption
    once, as the section's heading and the paragraph below the figure."""
    title = fig.layout.title.text or ""
    notes = [a for a in fig.layout.annotations if a.name == "caption"]
    page_fig = go.Figure(fig)
    page_fig.layout.annotations = [a for a in fig.layout.annotations if a.name != "caption"]
    if notes:
        lines = sum(n.text.count("<br>") + 1 for n in notes)
        page_fig.update_layout(height=(fig.layout.height or 500) - 16 * lines, margin=dict(b=60))
    page_fig.update_layout(title=dict(text=""), margin=dict(t=30))
    return page_fig, title, "<br>".join(n.text for n in notes)


def _plain(text: str) -> str:
    """Figure text (plotly's <br>, <sup>) as escaped HTML with line breaks kept."""
    return "<br>".join(html.escape(re.sub(r"<[^>]+>", "", part)) for part in text.split("<br>"))


def figure_html(name: str, fig: go.Figure, data_line: str, files: dict[str, Path], page: Path) -> str:
    shown, title, cap = split_figure(fig)
    div = pio.to_html(shown, include_plotlyjs=False, full_html=False, div_id=f"fig-{name}",
                      config={"responsive": True, "displaylogo": False})
    links = " ".join(f'<a href="{html.escape(os.path.relpath(p, page.parent))}">{fmt.upper()}</a>'
                     for fmt, p in sorted(files.items()))
    extra = " · ".join(t for t in (data_line, f"download: {links}" if links else "") if t)
    return (f'<section class="fig" id="{html.escape(name)}"><h2>{_plain(title) or html.escape(name)}</h2>{div}'
            f'<p class="caption">{_plain(cap)}{"<br>" if cap and extra else ""}{extra}</p></section>')


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
{f'<section><h2>Not drawn</h2><ul>{skipped}</ul></section>' if skipped else ''}
{f'<script>{EXPLORER_JS}</script>' if explorer else ''}
</body></html>"""


PAGE_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
.controls{display:flex;flex-wrap:wrap;gap:1.2em;align-items:center;margin:.5em 0}
.caption{color:#444;font-size:.9em;white-space:pre-line}table.runs{border-collapse:collapse;font-size:.85em}
table.runs td,table.runs th{border:1px solid #ddd;padding:2px 6px}section{margin-top:2em}h2{font-size:1.2em}"""

# The explorer: picks the frame drawn beforehand (in Python) for the metric, depth stop, step and sort order the
# controls name, resolves its pooled arrays, and hands it to Plotly.react. It computes nothing about the curves.
EXPLORER_JS = r"""(function () {
const D = JSON.parse(document.getElementById('resviz-explorer-data').textContent);
const $ = id => document.getElementById(id);
const metricSel = $('rv-metric'), depthIn = $('rv-depth'), stepIn = $('rv-step'), sortBox = $('rv-sort');
const pooled = v => (v !== null && typeof v === 'object' && !Array.isArray(v) && '$' in v) ? D.pool[v.$] : v;
const resolve = t => Object.assign({}, t, {x: pooled(t.x), y: pooled(t.y), text: pooled(t.text),
  customdata: pooled(t.customdata)});
let groups = [], steps = [];
D.metrics.forEach(m => { const o = document.createElement('option'); o.value = m.name; o.textContent = m.title;
  metricSel.appendChild(o); });
const view = () => D.views[metricSel.value][groups[+depthIn.value]];
function setMetric() {
  const keep = groups[+depthIn.value];
  groups = D.groups.filter(g => g in D.views[metricSel.value]);
  depthIn.max = groups.length - 1; depthIn.value = Math.max(groups.indexOf(keep), 0);
  depthIn.disabled = groups.length < 2; setGroup();
}
function setGroup() {
  const keep = steps.length ? steps[+stepIn.value] : null;
  const wasLast = steps.length === 0 || +stepIn.value === steps.length - 1;
  steps = view().steps;
  let j = steps.length - 1;
  if (!wasLast && keep !== null) { j = 0; steps.forEach((t, k) => { if (t <= keep) j = k; }); }
  stepIn.max = steps.length - 1; stepIn.value = j; stepIn.disabled = steps.length < 2; draw();
}
function draw() {
  const g = groups[+depthIn.value], frame = view().frames[+stepIn.value][sortBox.checked ? 1 : 0];
  $('rv-depth-label').textContent = /^\d+$/.test(g) ? 'depth ' + g : g;
  $('rv-step-label').textContent = 'step ' + steps[+stepIn.value];
  $('rv-caption').textContent = frame.caption;
  Plotly.react('rv-explorer', frame.data.map(resolve), Object.assign({}, D.layout, frame.layout),
    {responsive: true, displaylogo: false});
}
metricSel.addEventListener('change', setMetric); depthIn.addEventListener('input', setGroup);
stepIn.addEventListener('input', draw); sortBox.addEventListener('change', draw);
metricSel.value = D.first; setMetric();
})();"""


# ---- writing ---------------------------------------------------------------------------------------------------
def _static_files(figs: dict[str, go.Figure], out: Path, static: tuple[str, ...], required: bool, rerun: str):
    """{name: {fmt: path}} of the PNG/SVG/PDF written in out/figures, and a one-line note when skipped.
    Raises the export's error when `required` (the user asked for these formats by name)."""
    if not static or not figs:
        return {}, ""
    if export.find_browser() is None and not required:
        return {}, (f"{'/'.join(static).upper()} not written: no Chrome/Chromium found; {export.INSTALL_HINT} "
                    f"(or `plotly_get_chrome` with internet access), then `{rerun}`")
    paths = export.export(figs, out / "figures", static)
    found: dict[str, dict[str, Path]] = {}
    for p in paths:
        found.setdefault(p.stem, {})[p.suffix.lstrip(".")] = p
    return found, ""


def rerun_command(runs_or_path, out: Path, static: tuple[str, ...]) -> str:
    """The `resviz report` command that writes this report again with `static` images (RUNS where the runs were
    given as a table rather than a folder or glob)."""
    runs = shlex.quote(str(runs_or_path)) if isinstance(runs_or_path, (str, os.PathLike)) else "RUNS"
    return f"resviz report {runs} --out {shlex.quote(str(out))} --formats {','.join(('html', *static))}"


def write_report(runs_or_path, out: str | os.PathLike, *, static: tuple[str, ...] | None = None,
                 step: int | None = None, auto_static: tuple[str, ...] = STATIC_DEFAULT,
                 runs_named: str | None = None) -> Report:
    """Write out/index.html (+ out/plotly.min.js, + out/figures/*.png|svg|pdf) for a run folder, glob or RunSet.

    `static=None` writes `auto_static` (PNG, SVG and PDF) when a browser is found and says in
    `Report.static_note` why not otherwise, ending in the `resviz report` command that writes them (with
    `runs_named` as its RUNS when a RunSet is given); formats named explicitly must be made (BrowserNotFoundError
    otherwise).
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

    data_line = f"data: {facts['data']}" if facts.get("data") else ""

    def page(files: dict) -> bytes:
        sections = [figure_html(n, f, data_line, files.get(n, {}), index) for n, f in figs.items()]
        return page_html(header_html(runset, facts), explorer_html(data) if data else "", sections, notes).encode()

    written = [atomic_write_bytes(out / "plotly.min.js", export.plotlyjs_bytes()), atomic_write_bytes(index, page({}))]
    files, note = _static_files(figs, out, static, required, rerun_command(runs_named or runs_or_path, out, static))
    if files:
        atomic_write_bytes(index, page(files))
    return Report(index, written + [p for d in files.values() for p in d.values()], skipped, note)
