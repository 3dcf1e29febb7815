"""Figure text that is true of every model: five tiny models (a Hugging Face GPT-2, a timm ViT, a timm ResNet with
zero_init_last, a resviz BatchNorm ResNet, a resviz LayerNorm ResNet) recorded into run folders by a plain loop,
then every stats-table figure function and `resviz report` drawn from those folders. The text a reader sees
(titles, axis titles, annotations, legend names, the page's headings and captions) is collected and checked
against the model it describes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import sizes
import torch
import torch.nn.functional as F

from resviz import export, plots, report, runs, streams, synthetic
from resviz.measure import heldout_response_std
from resviz.models import cifar_resnet, model_identity
from resviz.plots import style
from resviz.probes import Recorder
from resviz.runfolder import RunFolder
from resviz.schema import METRIC_TABLE

STEPS = 3
MODELS = ("gpt2", "vit", "timm_resnet", "resnet_bn", "resnet_ln")
TRANSFORMERS = ("gpt2", "vit")
NEVER = re.compile(r"(?<![\w.])-1(?![\d.])|\bunknown\b|\bnan\b", re.IGNORECASE)  # said of no model
BN_WORDS = re.compile(r"3×3|\bBN\b|BatchNorm|He et al", re.IGNORECASE)  # said only of BatchNorm CIFAR nets


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    return model, lambda m: m(input_ids=ids, labels=ids).loss


def _image_model(model):
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    return model, lambda m: F.cross_entropy(m(x), y)


def build(name: str):
    """(model, loss function of the model) for one of MODELS, tiny and seeded."""
    torch.manual_seed(0)
    if name == "gpt2":
        return _gpt2()
    if name in ("vit", "timm_resnet"):
        timm = pytest.importorskip("timm")
        if name == "vit":
            return _image_model(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                                  num_classes=10))
        return _image_model(timm.create_model("resnet10t", num_classes=10))  # zero_init_last=True by default
    return _image_model(cifar_resnet(8, width=4, norm="batch" if name == "resnet_bn" else "layer"))


def record_run(out, name: str) -> None:
    """Train `name` for STEPS steps with the Recorder on every step; write its run folder (eval-mode rows at the
    first and last step for the BatchNorm ResNet, as `resviz train` measures them)."""
    model, loss_fn = build(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    extra = []
    model.train()
    with Recorder(model, every=1, run_info={"run_id": name, "seed": 0}, per_channel=True) as rec:
        for step in range(STEPS):
            if step == 0 and name == "resnet_bn":
                extra.append(heldout_response_std(model, images, (0.5,) * 3, (0.25,) * 3, run_info={
                    "run_id": name, "seed": 0}, step=0, calibrate=torch.randn(16, 3, 32, 32)))
            loss = loss_fn(model)
            loss.backward()
            rec.end_step(step)
            opt.step()
            opt.zero_grad(set_to_none=True)
    if name == "resnet_bn":
        extra.append(heldout_response_std(model, images, (0.5,) * 3, (0.25,) * 3,
                                          run_info={"run_id": name, "seed": 0}, step=STEPS))
    folder = RunFolder(out, name)
    folder.open({**model_identity(model), "seed": 0, "steps": STEPS, "dataset": "random images"})
    folder.add_stats(rec.frame())
    for frame in extra:
        folder.add_stats(frame)
    folder.add_metrics([{"step": s, "epoch": s / 10, "train_error": 0.9 - 0.1 * s, "test_error": 0.95 - 0.1 * s,
                         "loss": 2.3 - 0.1 * s} for s in range(1, STEPS + 1)])
    folder.finish("done", step=STEPS)


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("five-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODELS:
            record_run(out, name)
    return out


def figure_text(fig) -> list[str]:
    """Every text a reader sees in a figure: title, axis and colour-bar titles, annotations, legend names."""
    lay = fig.layout
    out = [lay.title.text or ""]
    for key in dir(lay):
        if re.fullmatch(r"[xy]axis\d*", key) and lay[key].title.text:
            out.append(lay[key].title.text)
    out += [a.text for a in lay.annotations or ()]
    out += [t.name for t in fig.data if t.name and t.showlegend is not False]
    out += [t.colorbar.title.text for t in fig.data if getattr(t, "colorbar", None) and t.colorbar.title.text]
    return [t for t in out if t]


def every_figure(stats: pd.DataFrame, metrics: pd.DataFrame) -> dict[str, object]:
    """Every public figure function that draws a stats or training table, on one run's tables."""
    present = set(stats["metric"].astype(str))
    figs = {"response_std": plots.plot_response_std(stats), "sorted": plots.plot_response_std(stats, sort=True),
            "first_step": plots.plot_response_std(stats, step=0), "branch_skip": plots.plot_branch_skip(stats),
            "signal": plots.plot_signal_propagation(stats), "training": plots.plot_training_curves(metrics),
            "grad_norm": plots.plot_gradient_flow(stats, "grad_norm"),
            "act_grad_norm": plots.plot_gradient_flow(stats, "act_grad_norm"),
            "heatmap": plots.plot_heatmap(stats, "response_std"), "channels": plots.plot_channel_std(stats)}
    present.discard("response_channel_std")  # one row per channel: drawn by plot_channel_std
    figs.update({f"profile_{m}": plots.plot_profile(stats, m) for m in sorted(present)})
    figs.update({f"first_{m}": plots.plot_profile(stats, m, step=0) for m in sorted(present)})
    try:
        figs["error_vs_depth"] = plots.plot_error_vs_depth(metrics)
    except ValueError as err:
        assert "known depth" in str(err)
    return figs


@pytest.mark.parametrize("name", MODELS)
def test_every_figure_says_only_what_is_true_of_its_model(run_root, name):
    rs = runs.load(run_root / name)
    for key, fig in every_figure(rs.stats, rs.metrics).items():
        text = " | ".join(figure_text(fig))
        assert not NEVER.search(text), (key, NEVER.search(text).group(0), text)
        if name != "resnet_bn":
            assert not BN_WORDS.search(text) or (name == "timm_resnet" and "He et al" not in text), (key, text)
        assert len([t for t in fig.data if t.showlegend is not False]) == 0 or fig.layout.showlegend, key
    caption = " ".join(figure_text(plots.plot_response_std(rs.stats)))
    assert ("He et al." in caption) == (name == "resnet_bn")
    legend = {t.name for t in plots.plot_response_std(rs.stats).data}
    expected = {"gpt2": "gpt2 (Hugging Face)", "vit": "vit_tiny_patch16_224 (timm)", "timm_resnet":
                "resnet10t (timm)", "resnet_bn": "ResNet-8", "resnet_ln": "ResNet-8 (norm=layer)"}[name]
    assert legend == {expected}


@pytest.mark.parametrize("name", MODELS)
def test_every_axis_names_the_unit_of_depth_its_rows_count(run_root, name):
    stats = runs.load(run_root / name).stats
    for metric in sorted(set(stats["metric"].astype(str)) - {"response_channel_std"}):
        title = plots.plot_profile(stats, metric).layout.xaxis.title.text
        assert METRIC_TABLE[metric].depth_unit in title, (metric, title)
    adds = plots.plot_branch_skip(stats).layout.xaxis2.title.text
    assert adds.startswith("residual add index")
    assert ("attn, then mlp" in adds) == (name in TRANSFORMERS), adds
    assert "LayerNorm" in plots.plot_response_std(stats).layout.xaxis.title.text or name in ("timm_resnet",
                                                                                            "resnet_bn")
    assert plots.plot_channel_std(stats).layout.xaxis.title.text.startswith("norm layer")


def test_zero_initialised_branches_are_explained_where_they_show(run_root):
    stats = runs.load(run_root / "timm_resnet").stats
    caption = " ".join(figure_text(plots.plot_response_std(stats, step=0)))
    assert "are exactly 0 at step 0" in caption and "zero_init_last" in caption
    ratio = " ".join(figure_text(plots.plot_branch_skip(stats, step=0)))
    assert "is exactly 0 at every residual add" in ratio and ratio.count("zero_init_last") == 1
    bn = " ".join(figure_text(plots.plot_response_std(runs.load(run_root / "resnet_bn").stats, step=0)))
    assert "exactly 0" not in bn and "zero_init_last" not in bn  # nothing zero-initialised: nothing said


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_report_of_five_models_reads_as_a_document(run_root, tmp_path):
    done = subprocess.run([sys.executable, "-m", "resviz.cli", "report", str(run_root), "--out", str(tmp_path / "r"),
                           "--formats", "html"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r" / "index.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    captions = re.findall(r'<p class="caption">(.*?)</p>', page, re.S)
    assert not any(re.search(r"heatmap_|_std\b|response std digits", h) for h in headings), headings
    for text in headings + captions:
        assert not NEVER.search(re.sub(r"<[^>]+>", " ", text)), text
    sections = page.split('<section class="fig"')[1:]
    assert len(sections) >= 10
    for section in sections:  # each caption once: below the figure, not inside it; the title is the heading
        heading, caption = re.search(r"<h2>(.*?)</h2>", section).group(1), section.rsplit('<p class="caption">', 1)[1]
        assert '"name":"caption"' not in section and caption.split("<br>")[0] not in section.rsplit("<p", 1)[0]
        assert f'"text":"{heading}"' not in section
    assert "Response std of each norm layer (BatchNorm) over training — ResNet-8" in headings
    assert "Response std of each norm layer — step 2" in headings  # train mode, every run, beside the eval one
    assert "this run&#x27;s own range" in page or "this run's own range" in page
    data = json.loads(re.search(r'id="resviz-explorer-data">(.*?)</script>', page, re.S).group(1))
    assert data["groups"][0] == "8" and {"gpt2", "resnet10t", "vit_tiny_patch16_224"} <= set(data["groups"])
    for metric, stops in data["views"].items():
        for group, view in stops.items():
            for frame in (f for pair in view["frames"] for f in pair):
                text = " ".join([frame["layout"]["title"]["text"], frame["layout"]["xaxis"]["title"]["text"],
                                 frame["caption"], *(t["name"] for t in frame["data"])])
                assert not NEVER.search(text), (metric, group, text)
                if group in ("gpt2", "vit_tiny_patch16_224"):
                    assert not BN_WORDS.search(text), (metric, group, text)


def test_the_explorer_draws_the_traces_of_the_python_figure(run_root):
    stats = runs.load(run_root / "gpt2").stats
    data = report.explorer_data(stats)
    view = data["views"]["branch_ratio"]["gpt2"]
    frame = view["frames"][-1][0]
    fig = plots.plot_profile(stats, "branch_ratio", step=view["steps"][-1])
    pooled = [data["pool"][t["y"]["$"]] for t in frame["data"]]
    assert [t["name"] for t in frame["data"]] == [t.name for t in fig.data]
    assert pooled == [[float(f"{v:.5g}") for v in t.y] for t in fig.data]
    assert frame["layout"]["xaxis"]["title"]["text"] == fig.layout.xaxis.title.text
    assert frame["layout"]["yaxis"]["type"] == fig.layout.yaxis.type == "log"
    assert frame["caption"].split("\n")[0] == fig.layout.annotations[0].text.split("<br>")[0]


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = Path(os.environ.get("RESVIZ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _chromium_page(pw):
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    return browser, browser.new_page(viewport={"width": 1200, "height": 900})


def _notebook_09_figures(tmp_path, monkeypatch) -> dict:
    """The figures notebook 09 draws, at its smoke sizes, by the calls its cells make."""
    monkeypatch.setenv("RESVIZ_SMOKE", "1")
    monkeypatch.setenv("RESVIZ_OUT", str(tmp_path / "out"))
    s = sizes.sizes("09_residual_streams")
    kw = dict(steps=s["steps"], every=s["every"], root=s["data_root"], side=s["side"], batch=s["batch"])
    cnn = streams.train_timm(s["cnn"], **kw)
    vit = streams.train_timm("vit_tiny_patch16_224", **kw, **s["vit"])
    gpt = streams.train_gpt2(**s["gpt2"])
    figs = {"branch_skip": plots.plot_branch_skip, "signal": plots.plot_signal_propagation,
            "response_std": plots.plot_response_std}
    drawn = (("cnn", cnn, ("branch_skip", "signal")), ("vit", vit, ("branch_skip",)),
             ("gpt2", gpt, ("branch_skip", "signal", "response_std")))
    return {f"{name}_{fig}": figs[fig](run.stats) for name, run, which in drawn for fig in which}


@pytest.mark.slow
@pytest.mark.browser
def test_notebook_09_figures_and_the_report_in_chromium(run_root, tmp_path, monkeypatch):
    """Screenshots in test-artifacts/ (git-ignored) of notebook 09's figures and of the report of the five models:
    the figures are drawn by Chromium with the words checked above, the page's explorer at step 0 too."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("timm")
    figs = _notebook_09_figures(tmp_path, monkeypatch)
    for key, fig in figs.items():
        text = " | ".join(figure_text(fig))
        assert not NEVER.search(text) and (key.startswith("cnn") or not BN_WORDS.search(text)), (key, text)
    paths = export.export(figs, tmp_path / "figures", ("html",))
    rep = report.write_report(run_root, tmp_path / "report", static=("html",))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser, page = _chromium_page(pw)
        try:
            for path in paths:
                page.goto(path.as_uri())
                page.wait_for_selector(".js-plotly-plot .main-svg")
                page.screenshot(path=str(ARTIFACTS / f"figures_09_{path.stem}.png"), full_page=True)
            page.goto(rep.index.as_uri())
            page.wait_for_function("() => document.getElementById('rv-explorer').data !== undefined")
            page.screenshot(path=str(ARTIFACTS / "figures_report_five_models.png"), full_page=True)
            page.focus("#rv-step")
            page.keyboard.press("Home")
            page.wait_for_function("() => document.getElementById('rv-step-label').textContent === 'step 0'")
            page.locator("#explorer-section").screenshot(path=str(ARTIFACTS / "figures_report_explorer_step0.png"))
            caption = page.text_content("#rv-caption")
        finally:
            browser.close()
    assert "Step 0: at step 0 the running statistics are first estimated" in caption
    assert all((ARTIFACTS / f"figures_09_{p.stem}.png").stat().st_size > 10_000 for p in paths)


def test_every_series_colour_reads_on_white_and_kinds_of_net_differ_by_symbol():
    colours = [style.run_color(arch, depth, norm, shortcut, seed) for arch in ("plain", "resnet")
               for depth in (8, 14, 20, 32, 44, 56, 110, 1202) for norm in ("batch", "layer", "none")
               for shortcut in ("A", "B") for seed in (-1, 0, 1, 2)]
    others = (("gpt2", "hf gpt2"), ("resnet10t", "timm resnet"), ("vit_tiny_patch16_224", "timm vision_transformer"))
    colours += [style.run_color("X", -1, model=m, family=f) for m, f in others]
    colours += [*style.VARIANT_COLORS.values(), *style.NORM_COLORS.values(), *style._OTHER, *style._PALETTE]
    worst = min(colours, key=style.contrast)
    assert style.contrast(worst) >= style.MIN_CONTRAST, worst
    assert style.contrast("#F0C05A") < style.MIN_CONTRAST  # the old palette's lightest plain colour would fail
    symbols = {style.run_symbol("plain"), style.run_symbol("resnet"), style.run_symbol("ResNet", "timm resnet"),
               style.run_symbol("GPT2LMHeadModel", "hf gpt2")}
    assert len(symbols) == 4
    one = plots.plot_profile(runs_frame_of_one(), "branch_ratio")
    assert one.layout.showlegend and one.data[0].marker.symbol == "circle"  # one trace, still a legend


def runs_frame_of_one() -> pd.DataFrame:
    return synthetic.stats_frame([("resnet", 8)], steps=(0,), metrics=("branch_ratio",))
