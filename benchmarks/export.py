"""Export time for 10 figures: one headless browser for the batch (resviz.export) vs one per figure.

The 10 figures are the report's standard figures of synthetic runs (plain/ResNet-20, 56, 110). "one per
figure" is plotly's `fig.write_image(path)` in a loop, which starts Chromium for every call. Needs
Chrome/Chromium (Debian: apt-get install chromium).

    python benchmarks/export.py [--repeat 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from resviz import synthetic

ROOT = Path(__file__).resolve().parents[1]


def ten_figures():
    from resviz import plots

    runs = [(a, d) for d in (20, 56, 110) for a in ("plain", "resnet")]
    stats = synthetic.stats_frame(runs, steps=(0, 500, 1000, 1500))
    train = synthetic.train_frame(runs)
    figs, _ = plots.standard_figures(stats, train)
    names = list(figs)[:10]
    assert len(names) == 10, names
    return {n: figs[n] for n in names}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def size(folder: Path, suffix: str) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffix))


def main() -> None:
    from resviz import export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of each case; the median is shown")
    args = parser.parse_args()
    browser = export.find_browser()
    if browser is None:
        sys.exit(f"no browser: {export.INSTALL_HINT}")
    figs = ten_figures()
    rows = []

    def case(label, fn, files, suffix):
        times = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                times.append(timed(lambda: fn(out)))
                mb = size(out, suffix) / 1e6
        t = statistics.median(times)
        rows.append((label, files, t, t / files, mb))

    case("PNG, one browser (resviz.export)", lambda out: export.export(figs, out, "png"), 10, ".png")
    case("PNG, one browser per figure (fig.write_image)",
         lambda out: [f.write_image(out / f"{n}.png", width=900, height=f.layout.height or 500) for n, f in figs.items()],
         10, ".png")
    case("PNG+SVG+PDF, one browser (resviz.export)", lambda out: export.export(figs, out, "png,svg,pdf"), 30, "")
    case("HTML, plotly.js embedded", lambda out: export.export(figs, out, "html"), 10, ".html")
    case("HTML, plotly.min.js beside", lambda out: export.export(figs, out, "html", plotlyjs="directory"), 11, "")

    print(f"browser: {browser}")
    head = f"{'case':48} {'files':>5} {'total s':>8} {'s/file':>7} {'MB':>7}"
    print(head)
    print("-" * len(head))
    for label, files, t, per, mb in rows:
        print(f"{label:48} {files:>5} {t:>8.2f} {per:>7.3f} {mb:>7.1f}")
    one, many = rows[0][2], rows[1][2]
    print(f"\none browser is {many / one:.1f}x faster than one per figure for 10 PNGs")


if __name__ == "__main__":
    main()
