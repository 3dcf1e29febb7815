"""`resviz report`: one offline index.html and one plotly.min.js per folder; the page opened in Debian's chromium
(through the playwright package, never a downloaded browser): both sliders moved with the keyboard change the
plotted data; a screenshot is kept in the test's tmp dir."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from resviz import synthetic

from resviz import io, report, runfolder

CHROMIUM = Path(os.environ.get("RESVIZ_CHROMIUM", "/usr/bin/chromium"))


STEPS = (0, 100, 200, 300)


def write_run(root: Path, arch: str, depth: int) -> None:
    """A run folder as `resviz train` leaves it, with synthetic tables of the real layer layout (no training)."""
    run = synthetic.SyntheticRun(arch, depth)
    folder = root / run.id
    io.atomic_write_json(folder / "config.json", {
        "run_id": run.id, "arch": arch, "depth": depth, "norm": "batch", "shortcut": "A", "seed": 0, "steps": 300,
        "dataset": "digits", "versions": {"resviz": "0.1.0", "torch": "2.x", "python": "3.11"}})
    runfolder.write_status(folder, "done")
    io.atomic_write_parquet(folder / "stats.parquet", synthetic.stats_frame([run], steps=STEPS))
    train_rows = synthetic.train_frame([run], steps=STEPS, eval_every=100)
    io.atomic_write_parquet(folder / "metrics.parquet",
                              train_rows.drop(columns=["arch", "depth", "norm", "shortcut", "seed"]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two runs (plain-8, ResNet-14): two depth stops, four recorded steps each."""
    out = tmp_path_factory.mktemp("runs")
    write_run(out, "plain", 8)
    write_run(out, "resnet", 14)
    return out


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="resviz-explorer-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_report_writes_one_offline_page_and_one_plotlyjs(run_dir, tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "resviz.cli", "report", str(run_dir), "--out", str(out),
                        "--formats", "html"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    page = (out / "index.html").read_text()
    assert sorted(p.name for p in out.glob("*.js")) == ["plotly.min.js"]
    assert not list(out.rglob("*.html"))[1:], "one page only"
    assert '<script src="plotly.min.js"></script>' in page
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", page), "the page loads a script from the network"
    assert (out / "index.html").stat().st_size < 1_000_000 < (out / "plotly.min.js").stat().st_size
    for words in ("digits", "resviz", "torch", "seeds", "<dt>steps</dt><dd>300</dd>"):
        assert words in page
    data = _data(page)
    assert data["groups"] == ["8", "14"]
    assert {m["name"] for m in data["metrics"]} >= {"response_std", "grad_norm", "branch_ratio"}
    view = data["views"]["response_std"]["8"]
    assert view["steps"] == [0, 100, 200, 300] and len(view["frames"]) == 4
    unsorted, ranked = view["frames"][-1]
    (trace,) = unsorted["data"]
    names, ys = data["pool"][trace["text"]["$"]], data["pool"][trace["y"]["$"]]
    assert len(names) == len(ys) == 7 and any(n.startswith("layer1.0.") for n in names)  # hover names the layer
    assert data["pool"][ranked["data"][0]["y"]["$"]] == sorted(ys, reverse=True)  # the sorted view, drawn in Python
    assert unsorted["layout"]["xaxis"]["title"]["text"].startswith("norm layer")
    assert page.count(unsorted["caption"].split("\n")[0]) >= 1
    assert str(out / "index.html") in r.stdout


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_explicit_static_format_without_a_browser_fails_in_one_line(run_dir, tmp_path):
    env = {**os.environ, "PATH": "/nonexistent", "BROWSER_PATH": str(tmp_path / "no-chrome")}
    r = subprocess.run([sys.executable, "-m", "resviz.cli", "report", str(run_dir), "--out", str(tmp_path / "r"),
                        "--formats", "png"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "PNG export needs Chrome or Chromium" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "r" / "index.html").is_file()  # the page is written before the static images are tried


def test_default_report_without_a_browser_writes_the_page_and_says_what_it_skipped(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    monkeypatch.setenv("PATH", "/nonexistent")
    rep = report.write_report(run_dir, tmp_path / "r")
    assert [p.name for p in rep.files] == ["plotly.min.js", "index.html"]
    assert rep.static_note.startswith("PNG/SVG/PDF not written: no Chrome/Chromium found")
    assert "apt-get install chromium" in rep.static_note and "plotly_get_chrome" in rep.static_note


def _slider_moves(page, slider: str) -> tuple[list, list, str]:
    before = page.evaluate("() => document.getElementById('rv-explorer').data.map(t => t.y)")
    page.focus(f"#{slider}")
    page.keyboard.press("ArrowLeft" if slider == "rv-step" else "ArrowRight")
    page.wait_for_function("(b) => JSON.stringify(document.getElementById('rv-explorer').data.map(t => t.y)) "
                           "!== b", arg=json.dumps(before), timeout=10_000)
    after = page.evaluate("() => document.getElementById('rv-explorer').data.map(t => t.y)")
    return before, after, page.evaluate("() => document.getElementById('rv-explorer').layout.title.text")


@pytest.mark.browser
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_both_sliders_work_in_chromium_without_jupyter(run_dir, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    rep = report.write_report(run_dir, tmp_path / "report", static=("html",))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(rep.index.as_uri())
            page.wait_for_function("() => document.getElementById('rv-explorer').data !== undefined")
            title0 = page.evaluate("() => document.getElementById('rv-explorer').layout.title.text")
            assert page.text_content("#rv-depth-label") == "depth 8" and "step 300" in title0
            before, after, title = _slider_moves(page, "rv-depth")
            assert page.text_content("#rv-depth-label") == "depth 14" and before != after
            before, after, title = _slider_moves(page, "rv-step")
            assert "step 200" in title and before != after
            page.check("#rv-sort")
            ranked = page.evaluate("() => document.getElementById('rv-explorer').data[0].y")
            assert ranked == sorted(ranked, reverse=True)
            page.select_option("#rv-metric", "grad_norm")
            assert page.evaluate("() => document.getElementById('rv-explorer').layout.yaxis.type") == "log"
            assert page.evaluate("() => document.querySelectorAll('.fig .js-plotly-plot').length") >= 5
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_models_that_are_not_cifar_nets_get_their_own_depth_stops():
    stats = synthetic.stats_frame([("resnet", 8), ("plain", 14)], steps=(0, 10), metrics=("response_std",))
    vit = stats[stats["run_id"] == "resnet8-batch-s0"].copy()
    vit["run_id"], vit["arch"], vit["depth"] = "vit", "VisionTransformer", -1
    vit["layer"] = vit["layer_index"].map(lambda i: f"blocks.{i}.norm1")
    both = pd.concat([stats.assign(model="resviz-net", family="resviz"),
                      vit.assign(model="vit_tiny_patch16_224", family="timm vision_transformer")], ignore_index=True)
    data = report.explorer_data(both)
    assert data["groups"] == ["8", "14", "vit_tiny_patch16_224"]
    (trace,) = data["views"]["response_std"]["vit_tiny_patch16_224"]["frames"][-1][0]["data"]
    assert data["pool"][trace["text"]["$"]][1] == "blocks.1.norm1" and trace["name"] == "vit_tiny_patch16_224 (timm)"


def test_long_runs_are_thinned_to_a_page_of_a_few_megabytes():
    assert list(report.thinned(5)) == [0, 1, 2, 3, 4]
    idx = report.thinned(3_201)
    assert len(idx) == report.MAX_STEPS and idx[0] == 0 and idx[-1] == 3_200 and (pd.Series(idx).diff()[1:] > 0).all()
    stats = synthetic.stats_frame([("resnet", 8)], steps=tuple(range(0, 3_000, 10)), metrics=("response_std",))
    view = report.explorer_data(stats)["views"]["response_std"]["8"]
    assert len(view["steps"]) == len(view["frames"]) == report.MAX_STEPS and view["steps"][-1] == 2_990
