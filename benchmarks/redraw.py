"""Dashboard redraw time when a control moves, for 56-layer and 1202-layer stats tables.

Each table holds plain and ResNet runs (several seeds) at the depth under test, plus depth-20 runs so the
depth slider has somewhere to go, with every metric at `--steps` recorded steps (synthetic rows, real
shapes). A "redraw" is the time from setting a control's `.value` in Python to the observer returning:
the FigureWidget's traces swapped inside batch_update() and the update message handed to the comm.
`--kernel` repeats the measurement inside a real ipykernel through nbclient, where that message is
serialised and sent over ZeroMQ as it is for a browser.

    python benchmarks/redraw.py [--seeds 3] [--steps 50] [--moves 30] [--kernel]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from resviz import synthetic
from resviz.synthetic import SyntheticRun

ROOT = Path(__file__).resolve().parents[1]

TARGET_MS = 200.0


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def measure(depth: int, seeds: int = 3, steps: int = 50, moves: int = 30) -> dict:
    """Times (ms) of one dashboard over a synthetic table of `depth`; returns a dict of summaries."""
    from resviz import widgets

    t0 = time.perf_counter()  # the first FigureWidget of a process loads (and, in a kernel, sends) plotly.js
    widgets.explore(synthetic.stats_frame([("resnet", 20)], steps=(0,), metrics=("response_std",)))
    first_widget_s = time.perf_counter() - t0
    runs = [SyntheticRun(a, d, seed=s) for d in (20, depth) for a in ("plain", "resnet") for s in range(seeds)]
    t0 = time.perf_counter()
    stats = synthetic.stats_frame(runs, steps=tuple(range(0, 100 * steps, 100)))
    make_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = widgets.explore(stats, depth=depth)
    build_s = time.perf_counter() - t0
    assert d.message.value == "", d.message.value
    options = [v for _, v in d.step_slider.options]
    step_ms = []
    for i in range(moves):
        value = options[(i * 7 + 3) % len(options)]
        if value == d.step_slider.value:
            value = options[(options.index(value) + 1) % len(options)]
        step_ms.append(_ms(lambda: setattr(d.step_slider, "value", value)))
    depth_ms, sort_ms, metric_ms = [], [], []
    for i in range(max(moves // 3, 2)):
        depth_ms.append(_ms(lambda: setattr(d.depth_slider, "value", 20 if d.depth_slider.value == depth else depth)))
        sort_ms.append(_ms(lambda: setattr(d.sort_toggle, "value", not d.sort_toggle.value)))
        metric_ms.append(_ms(lambda: setattr(d.metric_dropdown, "value",
                                             "grad_norm" if d.metric_dropdown.value == "response_std" else "response_std")))
    d.depth_slider.value = depth
    d.metric_dropdown.value = "response_std"
    layers = max(len(t.y) for t in d.figure.data if t.visible is not False)

    def summary(xs):
        xs = sorted(xs)
        return {"median": statistics.median(xs), "p95": xs[min(len(xs) - 1, int(0.95 * len(xs)))], "max": xs[-1]}

    return {
        "depth": depth, "rows": len(stats), "traces": 2 * seeds, "points_per_trace": layers,
        "make_s": make_s, "first_widget_s": first_widget_s, "build_s": build_s, "step": summary(step_ms), "depth_move": summary(depth_ms),
        "sort": summary(sort_ms), "metric": summary(metric_ms),
    }


def in_kernel(depth: int, seeds: int, steps: int, moves: int) -> dict:
    """Run `measure` inside an ipykernel (nbclient) so widget messages really go over the wire."""
    import nbformat
    from nbclient import NotebookClient

    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); sys.path.insert(0, {str(ROOT)!r})\n"
        f"from redraw import measure\nprint('RESULT' + json.dumps(measure({depth}, {seeds}, {steps}, {moves})))"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=False).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    return json.loads(text.split("RESULT", 1)[1].strip().splitlines()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per architecture and depth (default 3)")
    parser.add_argument("--steps", type=int, default=50, help="recorded steps per run (default 50)")
    parser.add_argument("--moves", type=int, default=30, help="step-slider moves timed (default 30)")
    parser.add_argument("--kernel", action="store_true", help="also measure inside an ipykernel via nbclient")
    args = parser.parse_args()
    results = []
    for depth in (56, 1202):
        results.append(("python", measure(depth, args.seeds, args.steps, args.moves)))
        if args.kernel:
            results.append(("kernel", in_kernel(depth, args.seeds, args.steps, args.moves)))
    head = (f"{'where':7} {'depth':>5} {'rows':>9} {'traces':>6} {'pts/trace':>9} {'1st widget s':>12} {'build s':>7} "
            f"{'step med/p95/max ms':>21} {'depth ms':>9} {'sort ms':>8} {'metric ms':>9}")
    print(head)
    print("-" * len(head))
    for where, r in results:
        s = r["step"]
        print(f"{where:7} {r['depth']:>5} {r['rows']:>9,} {r['traces']:>6} {r['points_per_trace']:>9} "
              f"{r['first_widget_s']:>12.2f} {r['build_s']:>7.2f} {s['median']:>7.1f}/{s['p95']:>5.1f}/{s['max']:>5.1f} "
              f"{r['depth_move']['median']:>9.1f} {r['sort']['median']:>8.1f} {r['metric']['median']:>9.1f}")
    worst = max(max(r["step"]["max"], r["depth_move"]["max"], r["sort"]["max"], r["metric"]["max"]) for _, r in results)
    print(f"\nslowest redraw of any control: {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
