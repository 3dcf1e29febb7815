"""export.py and `resviz report`: real files through Kaleido + Chromium (one browser per batch), offline HTML,
the no-browser path, bad formats and unwritable folders."""
from __future__ import annotations

import os
import re
import struct

import plotly.io as pio
import pytest

from resviz import synthetic
from resviz import cli, export, io, plots, runfolder

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<svg", "pdf": b"%PDF-"}
needs_browser = pytest.mark.skipif(export.find_browser() is None, reason="no Chrome/Chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def figs():
    stats = synthetic.stats_frame([("plain", 20), ("resnet", 20)], steps=(0, 100))
    return {"fig7": plots.plot_response_std(stats), "grads": plots.plot_gradient_flow(stats)}


def assert_offline_html(text: str) -> None:
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", text), "HTML loads a script from the network"


@needs_browser
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_batch_export_every_format_with_one_browser(figs, tmp_path):
    paths = export.export(figs, tmp_path / "out", formats=("html", "png", "svg", "pdf"), width=640, height=400,
                          plotlyjs="embed")
    names = [p.name for p in paths]
    assert names == ["fig7.html", "fig7.png", "fig7.svg", "fig7.pdf",
                     "grads.html", "grads.png", "grads.svg", "grads.pdf"]
    for p in paths:
        if p.suffix != ".html":
            assert p.read_bytes().startswith(MAGIC[p.suffix[1:]]), p
    width, height = struct.unpack(">II", (tmp_path / "out" / "fig7.png").read_bytes()[16:24])  # IHDR
    assert (width, height) == (640, 400)
    assert "Gradient norm per parameter" in (tmp_path / "out" / "grads.svg").read_text()
    html = (tmp_path / "out" / "fig7.html").read_text()
    assert_offline_html(html)
    assert "plotly.js v" in html and len(html) > 1_000_000  # plotly.js itself is inside
    assert "ResNet-20" in html
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left
    assert oct((tmp_path / "out" / "fig7.png").stat().st_mode & 0o777) != oct(0o600)


def test_html_writes_plotlyjs_once_per_folder_by_default(figs, tmp_path):
    paths = export.export(list(figs.values()), tmp_path, formats="html")
    assert paths[0].name.startswith("response-std-of-each-norm-layer") and len(paths[0].name) <= 65
    assert paths[1].name == "gradient-norm-per-parameter-tensor-step-100.html"  # names from the titles
    js = tmp_path / "plotly.min.js"
    assert js.stat().st_size > 1_000_000
    for p in paths:
        text = p.read_text()
        assert 'src="plotly.min.js"' in text and len(text) < 200_000
        assert_offline_html(text)


def test_names(figs, tmp_path):
    fig = figs["fig7"]
    paths = export.export([fig, fig], tmp_path, "html", names=["a", "a"])
    assert [p.name for p in paths] == ["a.html", "a-2.html"]
    with pytest.raises(ValueError, match="got 1 name\\(s\\) for 2 figure\\(s\\)"):
        export.export([fig, fig], tmp_path, "html", names=["a"])
    with pytest.raises(ValueError, match="not plain file names"):
        export.export(fig, tmp_path, "html", names=["../x"])


def test_unknown_formats_list_the_valid_ones(figs, tmp_path):
    with pytest.raises(ValueError, match=r"unknown format\(s\) \['jpeg', 'eps'\]; valid formats: html, png, svg, pdf"):
        export.export(figs, tmp_path, formats="png,jpeg,eps")
    assert export.parse_formats(" PNG, .svg,png ") == ("png", "svg")
    assert not list(tmp_path.iterdir())  # nothing written before the check


def test_unwritable_folders(figs, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=r"cannot write to folder .*file.txt/out' \(Not a directory\); choose a writable"):
        export.export(figs, blocker / "out", "html")
    with pytest.raises(NotADirectoryError, match="it is a file, not a folder"):
        export.export(figs, blocker, "html")
    with pytest.raises(PermissionError, match="cannot write to folder '/proc/resviz-figures'"):
        export.export(figs, "/proc/resviz-figures", "html")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(figs, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(PermissionError, match="Permission denied"):
        export.export(figs, ro, "html")


def test_no_browser_still_writes_html(figs, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    with pytest.raises(RuntimeError, match="Kaleido requires Google Chrome"):
        pio.to_image(figs["fig7"], format="png")  # Kaleido itself finds no browser now
    assert export.find_browser() is None
    with pytest.raises(export.BrowserNotFoundError,
                       match=r"PNG/PDF export needs Chrome or Chromium: no browser at BROWSER_PATH=.*no-such-chromium.*"
                             r"apt-get install chromium.*set BROWSER_PATH.*the HTML was written \(2 file"):
        export.export(figs, tmp_path / "out", formats="html,png,pdf")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fig7.html", "grads.html", "plotly.min.js"]
    try:
        export.export(figs, tmp_path / "out2", formats="png")
    except export.BrowserNotFoundError as err:
        assert err.written == [] and "HTML was written" not in str(err)


def write_run(root, run_id, arch, depth, steps=(0, 100)):
    run = synthetic.SyntheticRun(arch, depth, run_id=run_id)
    folder = root / run_id
    io.atomic_write_json(folder / "config.json", {"run_id": run_id, "arch": arch, "depth": depth, "norm": "batch",
                                                    "shortcut": "A", "seed": 0, "steps": 100})
    runfolder.write_status(folder, "done")
    io.atomic_write_parquet(folder / "stats.parquet", synthetic.stats_frame([run], steps=steps))
    train = synthetic.train_frame([run], steps=steps, eval_every=100)
    io.atomic_write_parquet(folder / "metrics.parquet", train.drop(columns=["arch", "depth", "norm", "shortcut", "seed"]))


def test_report_command_html(tmp_path, capsys):
    write_run(tmp_path / "runs", "r20", "resnet", 20)
    write_run(tmp_path / "runs", "p20", "plain", 20)
    out = tmp_path / "report"
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(out), "--formats", "html"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(out / "plotly.min.js"), str(out / "index.html"),
                       f"open {out / 'index.html'} in a browser (offline: plotly.min.js sits beside it)"]
    page = (out / "index.html").read_text()
    assert_offline_html(page)
    for name in ("training_curves", "response_std", "response_std_sorted", "grad_norm", "act_grad_norm",
                 "branch_skip", "signal_propagation", "error_vs_depth", "heatmap_response_std_p20",
                 "heatmap_response_std_r20"):
        assert f'id="{name}"' in page
    assert "ResNet-20" in page


@needs_browser
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_report_command_png(tmp_path, capsys):
    write_run(tmp_path, "r20", "resnet", 20)
    out = tmp_path / "png"
    assert cli.main(["report", str(tmp_path / "r20"), "--out", str(out), "--formats", "png", "--step", "0"]) == 0
    printed = [p for p in capsys.readouterr().out.split() if p.endswith(".png")]
    assert len(printed) == 9 and all(p.startswith(str(out / "figures")) for p in printed)
    assert all(open(p, "rb").read(8) == MAGIC["png"] for p in printed)
    assert 'href="figures/response_std.png"' in (out / "index.html").read_text()


def test_report_command_errors(tmp_path, capsys, monkeypatch):
    assert cli.main(["report", str(tmp_path), "--formats", "html,gif"]) == 2
    assert "resviz: error: unknown format(s) ['gif']; valid formats: html, png, svg, pdf" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "resviz: error: no run folders in" in capsys.readouterr().err
    write_run(tmp_path, "r20", "resnet", 20)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["report", str(tmp_path / "r20"), "--out", str(tmp_path / "o"), "--formats", "html,png"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("resviz: error: PNG export needs Chrome or Chromium")
    assert "apt-get install chromium" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert (tmp_path / "o" / "index.html").is_file()  # the page is written before the images are tried
