"""resviz.plots (style, selection, depth, training, bn_check): trace counts, values against the table, axis titles and types, sorted view, styles, colours."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from plotly.colors import unlabel_rgb

from resviz import synthetic
from resviz import plots
from resviz.plots.depth import heatmap_range, profile_axes, profile_traces
from resviz.plots.selection import RUN_COLUMNS, profiles, run_key, run_meta
from resviz.plots.style import run_color
from resviz.schema import METRIC_TABLE
from resviz.synthetic import SyntheticRun

RUNS = [("plain", 20), ("resnet", 20), ("resnet", 56)]


@pytest.fixture(scope="module")
def stats() -> pd.DataFrame:
    return synthetic.stats_frame(RUNS, steps=(0, 100, 200))


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return synthetic.train_frame(RUNS, steps=tuple(range(0, 1001, 50)), eval_every=200)


def expected(stats, run_id, metric, step):
    """The independent answer: the table's rows at that step, in layer_index order."""
    rows = stats[(stats["run_id"] == run_id) & (stats["metric"] == metric) & (stats["step"] == step)]
    rows = rows.sort_values("layer_index")
    return rows["layer_index"].to_numpy(), rows["value"].to_numpy(), rows["layer"].astype(str).to_numpy()


def trace(fig, label):
    (t,) = [t for t in fig.data if t.name == label]
    return t


def test_synthetic_layout_matches_a_resviz_model():
    from resviz.models import cifar_resnet

    model = cifar_resnet(20)
    norms = [n for n, m in model.named_modules() if n.endswith(("bn1", "bn2"))]
    assert synthetic.layers(20, "response")["layer"].tolist() == norms  # 19 = depth - 1 layers
    params = [n for n, _ in model.named_parameters()]
    assert synthetic.layers(20, "param")["layer"].tolist() == params
    assert len(synthetic.layers(1202, "block")) == 600


def test_response_std_one_trace_per_run_with_the_tables_values(stats):
    fig = plots.plot_response_std(stats)
    assert [t.name for t in fig.data] == ["plain-20", "ResNet-20", "ResNet-56"]
    for label, rid in [("plain-20", "plain20-batch-s0"), ("ResNet-56", "resnet56-batch-s0")]:
        x, y, names = expected(stats, rid, "response_std", 200)  # default step: the last
        t = trace(fig, label)
        np.testing.assert_array_equal(t.x, x)
        np.testing.assert_array_equal(t.y, y)
        assert [c[0] for c in t.customdata] == list(names)  # hover names the layer
        assert "%{customdata[0]}" in t.hovertemplate
    assert len(trace(fig, "ResNet-56").x) == 55  # depth - 1 norm layers
    assert fig.layout.xaxis.title.text == "norm layer (BatchNorm) index along depth (0 = first)"
    assert fig.layout.yaxis.title.text == "response std (a.u.)"
    assert "step 200" in fig.layout.title.text
    (note,) = fig.layout.annotations
    assert "He et al." in note.text and "smaller the deeper" in note.text


def test_sorted_view_is_descending_and_keeps_layer_names(stats):
    fig = plots.plot_response_std(stats, sort=True, step=100)
    for t in fig.data:
        y = np.asarray(t.y)
        assert np.all(np.diff(y) <= 0)
        np.testing.assert_array_equal(t.x, np.arange(1, len(y) + 1))
    t = trace(fig, "ResNet-20")
    x, y, names = expected(stats, "resnet20-batch-s0", "response_std", 100)
    lookup = dict(zip(names, y))
    assert all(lookup[c[0]] == v for c, v in zip(t.customdata, t.y))  # each value still names its layer
    assert sorted(y, reverse=True) == list(t.y)
    assert fig.layout.xaxis.title.text.startswith("rank")
    assert fig.layout.title.text.endswith("— sorted, step 100")


def test_step_picks_last_recorded_at_or_before(stats):
    fig = plots.plot_response_std(stats, step=150)
    _, y, _ = expected(stats, "resnet20-batch-s0", "response_std", 100)
    np.testing.assert_array_equal(trace(fig, "ResNet-20").y, y)
    assert "step 100" in fig.layout.title.text
    first = plots.plot_response_std(stats, step=-5)  # before the first record: the first
    _, y0, _ = expected(stats, "resnet20-batch-s0", "response_std", 0)
    np.testing.assert_array_equal(trace(first, "ResNet-20").y, y0)


def test_runs_at_different_steps_are_labelled_with_their_step():
    a = synthetic.stats_frame([("resnet", 20)], steps=(0, 100), metrics=("response_std",))
    b = synthetic.stats_frame([("plain", 20)], steps=(0, 300), metrics=("response_std",))
    fig = plots.plot_response_std(pd.concat([a, b], ignore_index=True))
    assert sorted(t.name for t in fig.data) == ["ResNet-20 @ 100", "plain-20 @ 300"]
    assert "each run's last step" in fig.layout.title.text


def test_nan_values_are_kept_in_place(stats):
    bad = stats.copy()
    hit = (bad["run_id"] == "resnet20-batch-s0") & (bad["metric"] == "response_std") & (bad["step"] == 200) \
        & (bad["layer_index"] == 5)
    bad.loc[hit, "value"] = np.nan
    t = trace(plots.plot_response_std(bad), "ResNet-20")
    assert np.isnan(t.y[5]) and len(t.y) == 19
    s = trace(plots.plot_response_std(bad, sort=True), "ResNet-20")
    assert np.isnan(s.y[-1]) and np.all(np.diff(s.y[:-1]) <= 0)


def test_filters_and_no_rows_error(stats):
    fig = plots.plot_response_std(stats, arch="resnet", depth=56)
    assert [t.name for t in fig.data] == ["ResNet-56"]
    with pytest.raises(ValueError, match=r"no 'response_std' rows with arch='plain', depth=56; metrics present: \["):
        plots.plot_response_std(stats, arch="plain", depth=56)
    only_grad = stats[stats["metric"] == "grad_norm"]
    with pytest.raises(ValueError, match="no 'branch_std' rows; metrics present: \\['grad_norm'\\]"):
        plots.plot_profile(only_grad, "branch_std")
    with pytest.raises(ValueError, match="empty table"):
        plots.plot_response_std(stats.iloc[:0])
    with pytest.raises(ValueError, match="missing column"):
        plots.plot_response_std(stats.drop(columns=["layer_index"]))


def test_training_curves_fig6_convention(train):
    fig = plots.plot_training_curves(train, step=400)
    assert len(fig.data) == 6  # train + test per run
    for t in fig.data:
        if t.name.endswith(" train"):
            assert t.line.dash == "dash"
        else:
            assert t.name.endswith(" test") and t.line.dash in (None, "solid")
            assert t.line.width > trace(fig, t.name.replace(" test", " train")).line.width
    rows = train[train["run_id"] == "resnet56-batch-s0"]
    np.testing.assert_allclose(trace(fig, "ResNet-56 train").y, 100 * rows["train_error"].to_numpy())
    tested = rows.dropna(subset=["test_error"])
    np.testing.assert_array_equal(trace(fig, "ResNet-56 test").x, tested["step"].to_numpy())  # NaN rows skipped
    assert fig.layout.xaxis.title.text == "iteration (optimiser steps)"
    assert fig.layout.yaxis.title.text == "error (%)"
    assert [s.x0 for s in fig.layout.shapes] == [400]
    with pytest.raises(ValueError, match="missing column"):
        plots.plot_training_curves(train.drop(columns=["test_error"]))


def test_gradient_flow_is_log_scale(stats):
    fig = plots.plot_gradient_flow(stats, "grad_norm")
    assert fig.layout.yaxis.type == "log"
    t = trace(fig, "ResNet-20")
    assert t.customdata[0][0] == "conv1.weight" and t.customdata[-1][0] == "linear.bias"
    act = plots.plot_gradient_flow(stats, "act_grad_norm", step=0)
    assert act.layout.yaxis.type == "log" and len(trace(act, "ResNet-56").y) == 27
    assert act.layout.xaxis.title.text.startswith("residual add index")
    with pytest.raises(ValueError, match="not a gradient metric; use 'grad_norm' or 'act_grad_norm'"):
        plots.plot_gradient_flow(stats, "response_std")


def test_branch_skip_panels(stats):
    fig = plots.plot_branch_skip(stats)
    assert fig.layout.yaxis2.type == "log" and fig.layout.yaxis.type == "linear"
    skip = [t for t in fig.data if "skip_std" in t.hovertemplate]
    assert skip and all(t.line.dash == "dot" for t in skip)
    assert all(t.yaxis == "y" for t in skip)
    ratio = [t for t in fig.data if "branch_ratio" in t.hovertemplate]
    assert {t.yaxis for t in ratio} == {"y2"} and len(ratio) == 2  # plain nets have no skip, no ratio
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert sorted(legend) == ["ResNet-20", "ResNet-56", "plain-20"]  # one entry per run
    with pytest.raises(ValueError, match=r"no rows for any of \['branch_std', 'skip_std', 'branch_ratio'\]"):
        plots.plot_branch_skip(stats[stats["metric"] == "grad_norm"])


def test_signal_propagation_both_log(stats):
    fig = plots.plot_signal_propagation(stats, arch="resnet")
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    assert len(fig.data) == 6  # per run: squared mean; variance of the branch and of the block output
    names = sorted(t.name for t in fig.data if t.yaxis == "y2")
    assert names == ["ResNet-20 · branch", "ResNet-20 · out", "ResNet-56 · branch", "ResNet-56 · out"]
    assert {t.line.dash for t in fig.data if t.yaxis == "y2"} == {"solid", "dash"}
    assert fig.layout.yaxis2.title.text == METRIC_TABLE["channel_var"].axis_title


def test_heatmap_layer_by_step_readable_at_600_blocks():
    stats = synthetic.stats_frame([("resnet", 1202)], steps=(0, 50, 100, 400), metrics=("branch_ratio",))
    fig = plots.plot_heatmap(stats, "branch_ratio", step=60)
    (h,) = fig.data
    z = np.asarray(h.z)
    assert z.shape == (600, 4)
    rows = stats[stats["step"] == 400].sort_values("layer_index")
    np.testing.assert_allclose(z[:, 3], np.log10(rows["value"].to_numpy()))  # log colour for a ratio
    assert len(fig.layout.yaxis.tickvals) == 3  # one tick per stage, not 600 labels
    assert list(fig.layout.yaxis.ticktext) == ["stage 1", "stage 2", "stage 3"]
    assert h.customdata[599][0] == "layer3.199"
    assert [s.x0 for s in fig.layout.shapes if s.line.dash == "dash"] == [50]
    assert fig.layout.xaxis.title.text == "iteration (optimiser steps)"


def test_heatmap_needs_a_run_when_several(stats):
    with pytest.raises(ValueError, match="3 runs have 'response_std' rows; choose one with run="):
        plots.plot_heatmap(stats, "response_std")
    fig = plots.plot_heatmap(stats, "response_std", run="plain20-batch-s0")
    assert np.asarray(fig.data[0].z).shape == (19, 3)
    with pytest.raises(ValueError, match="run='nope' has no 'response_std' rows"):
        plots.plot_heatmap(stats, "response_std", run="nope")


def luminance(color: str) -> float:
    r, g, b = unlabel_rgb(color)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_run_meta_one_row_per_run_with_defaults():
    frame = pd.DataFrame({"arch": ["resnet", "resnet", "plain"], "depth": [20, 20, 8], "value": [1.0, 2.0, 3.0]})
    meta = run_meta(frame)
    assert list(meta.columns) == list(RUN_COLUMNS) and len(meta) == 2  # in order of first appearance
    assert meta.iloc[0].tolist() == ["", "resnet", 20, "unknown", "unknown", 0]
    assert meta["depth"].dtype == np.int64 and meta["seed"].dtype == np.int64
    assert run_key(meta.iloc[1]) == ("", "plain", 8, "unknown", "unknown", 0)
    with pytest.raises(ValueError, match="neither run_id nor arch"):
        run_meta(frame.drop(columns="arch"))


def test_profile_traces_are_what_plot_profile_draws(stats):
    profs = profiles(stats, "grad_norm", step=100)
    fig = plots.plot_profile(stats, "grad_norm", step=100)
    assert fig.to_json() == plots.profile_figure(profs, "grad_norm", step=100).to_json()
    specs = profile_traces(profs, "grad_norm", sort=True, widget_hover=True)  # the dashboard's form
    assert [s["name"] for s in specs] == [t.name for t in fig.data]
    assert list(specs[0]["text"][:1]) == [profs[0].layer[np.nanargmax(profs[0].value)]]  # largest first
    assert profile_axes(profs, "grad_norm")["yaxis"]["type"] == "log"  # from schema.METRIC_TABLE


def test_colours_consistent_warm_cool_and_darker_when_deeper(stats, train):
    figs = [plots.plot_response_std(stats), plots.plot_gradient_flow(stats), plots.plot_training_curves(train),
            plots.plot_response_std(stats, arch="resnet", depth=56)]
    colour = {}
    for fig in figs:
        for t in fig.data:
            label = t.name.replace(" train", "").replace(" test", "")
            assert colour.setdefault(label, t.line.color) == t.line.color
    plain, res20, res56 = (unlabel_rgb(colour[k]) for k in ("plain-20", "ResNet-20", "ResNet-56"))
    assert plain[0] > plain[2] and res20[2] > res20[0] and res56[2] > res56[0]  # warm vs cool
    assert luminance(colour["ResNet-56"]) < luminance(colour["ResNet-20"])
    assert luminance(run_color("plain", 110)) < luminance(run_color("plain", 20))
    assert run_color("resnet", 56, seed=1) != run_color("resnet", 56)


@pytest.mark.parametrize("arch", ["plain", "resnet"])
def test_neighbouring_depths_differ_at_a_glance(arch):
    depths = (8, 14, 20, 32, 44, 56, 110, 1202)
    rgb = [np.array(unlabel_rgb(run_color(arch, d)), dtype=float) for d in depths]
    gaps = [np.linalg.norm(a - b) for a, b in zip(rgb, rgb[1:])]
    assert min(gaps) > 60, gaps  # not just a lighter shade of one hue (issue 16: ResNet-14 vs ResNet-20)
    assert run_color(arch, 20) == run_color(arch, 22)  # other depths: the nearest one's colour


def test_labels_tell_variants_apart():
    runs = [SyntheticRun("resnet", 20), SyntheticRun("resnet", 20, seed=1), SyntheticRun("resnet", 20, norm="layer")]
    fig = plots.plot_response_std(synthetic.stats_frame(runs, metrics=("response_std",)))
    assert sorted(t.name for t in fig.data) == ["ResNet-20", "ResNet-20 (norm=layer)", "ResNet-20 (seed=1)"]
    assert len({t.line.color for t in fig.data}) == 3


def test_standard_figures(stats, train):
    figs, skipped = plots.standard_figures(stats, train)
    assert list(figs)[:7] == ["training_curves", "response_std", "response_std_sorted", "grad_norm",
                              "act_grad_norm", "branch_skip", "signal_propagation"]
    assert sorted(k for k in figs if k.startswith("heatmap_")) == [
        "heatmap_response_std_plain20-batch-s0", "heatmap_response_std_resnet20-batch-s0",
        "heatmap_response_std_resnet56-batch-s0"]
    assert skipped == {}
    figs, skipped = plots.standard_figures(stats[stats["metric"] == "response_std"], None)
    assert set(skipped) == {"training_curves", "error_vs_depth", "grad_norm", "act_grad_norm", "branch_skip",
                            "signal_propagation"}
    assert "no 'grad_norm' rows" in skipped["grad_norm"]


def test_real_recorder_frame_resnet8_and_plain8():
    """The Recorder's own table (ResNet-8 and plain-8, 2 steps, 8 random images) draws without surprises."""
    torch = pytest.importorskip("torch")
    probes = pytest.importorskip("resviz.probes")
    from resviz.models import cifar_resnet

    frames = []
    for plain in (False, True):
        torch.manual_seed(0)
        model = cifar_resnet(8, plain=plain)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        with probes.Recorder(model, every=1, run_info={"run_id": f"{'p' if plain else 'r'}8"}) as rec:
            for step in range(2):
                torch.nn.functional.cross_entropy(model(x), y).backward()
                rec.end_step(step)
                model.zero_grad()
        frames.append(rec.frame())
    stats = pd.concat(frames, ignore_index=True)
    figs, skipped = plots.standard_figures(stats)
    assert set(skipped) == {"training_curves", "error_vs_depth"}
    fig7 = figs["response_std"]
    assert sorted(t.name for t in fig7.data) == ["ResNet-8", "plain-8"]
    assert all(list(t.x) == list(range(7)) for t in fig7.data)  # depth - 1 norm layers
    spp = figs["signal_propagation"]
    var = sorted(t.name for t in spp.data if t.yaxis == "y2")
    assert var == ["ResNet-8 · branch", "ResNet-8 · out", "plain-8 · branch", "plain-8 · out"]
    for t in spp.data:  # one point per block: the block output and the branch are separate lines
        assert list(t.x) == [0, 1, 2]
    rows = stats[(stats["run_id"] == "r8") & (stats["metric"] == "channel_var") & (stats["step"] == 1)]
    out = rows[rows["layer"].astype(str).str.endswith("probe_out")].sort_values("layer_index")["value"]
    np.testing.assert_array_equal(trace(spp, "ResNet-8 · out").y, out.to_numpy())
    heat = plots.plot_heatmap(stats, "channel_var", run="r8", part="out")
    assert np.asarray(heat.data[0].z).shape == (3, 2)
    with pytest.raises(ValueError, match=r"part='x' is not a part of 'channel_var'; choose one of \['branch', 'out'\]"):
        plots.plot_heatmap(stats, "channel_var", run="r8", part="x")


def test_error_vs_depth_takes_each_runs_final_errors(train):
    fig = plots.plot_error_vs_depth(train, paper=False)
    assert [t.name for t in fig.data] == ["plain train", "plain test", "ResNet train", "ResNet test"]
    for arch, label in (("plain", "plain"), ("resnet", "ResNet")):
        rows = train[train["arch"] == arch]
        depths = sorted(rows["depth"].unique())
        last = [rows[rows["depth"] == d].sort_values("step").iloc[-1] for d in depths]
        tested = [rows[(rows["depth"] == d)].dropna(subset=["test_error"]).sort_values("step").iloc[-1] for d in depths]
        np.testing.assert_array_equal(trace(fig, f"{label} train").x, depths)
        np.testing.assert_allclose(trace(fig, f"{label} train").y, [100 * r["train_error"] for r in last])
        np.testing.assert_allclose(trace(fig, f"{label} test").y, [100 * r["test_error"] for r in tested])
    assert trace(fig, "plain train").line.dash == "dash" and trace(fig, "plain test").line.dash is None
    assert fig.layout.xaxis.title.text == "depth (layers)" and fig.layout.yaxis.title.text == "error (%)"
    with pytest.raises(ValueError, match="training table is missing column"):
        plots.plot_error_vs_depth(train.drop(columns=["test_error"]))
    with pytest.raises(ValueError, match=r"no training rows with depth=7"):
        plots.plot_error_vs_depth(train, depth=7)


def channel_frame() -> pd.DataFrame:
    """A real per-channel Recorder table of two width-8 nets (ResNet-8 and plain-8)."""
    torch = pytest.importorskip("torch")
    from resviz.models import cifar_resnet
    from resviz.probes import Recorder

    frames = []
    for plain in (False, True):
        torch.manual_seed(1)
        model = cifar_resnet(8, plain=plain, width=8)
        with Recorder(model, every=1, metrics=["response_std"], per_channel=True,
                      run_info={"run_id": "p8" if plain else "r8"}) as rec:
            with torch.no_grad():
                model(torch.randn(4, 3, 32, 32))
            rec.step()
        frames.append(rec.frame())
    return pd.concat(frames, ignore_index=True)


def test_channel_std_dots_per_channel_and_the_pooled_line():
    stats = channel_frame()
    fig = plots.plot_channel_std(stats)
    assert [t.name for t in fig.data] == ["plain-8 channels", "plain-8 pooled", "ResNet-8 channels", "ResNet-8 pooled"]
    dots, line = trace(fig, "ResNet-8 channels"), trace(fig, "ResNet-8 pooled")
    rows = stats[(stats["run_id"] == "r8") & (stats["metric"] == "response_channel_std")]
    rows = rows.sort_values(["layer_index", "channel"])
    assert len(dots.y) == 8 * 3 + 16 * 2 + 32 * 2  # one dot per channel of the 7 norm layers
    np.testing.assert_array_equal(dots.y, rows["value"].to_numpy())
    shift = dots.x[0] - rows["layer_index"].iloc[0]
    assert shift != 0 and np.allclose(np.asarray(dots.x) - shift, rows["layer_index"])  # runs side by side
    pooled = stats[(stats["run_id"] == "r8") & (stats["metric"] == "response_std")].sort_values("layer_index")
    np.testing.assert_array_equal(line.y, pooled["value"].to_numpy())
    assert [c[2] for c in dots.customdata[:3]] == [0, 1, 2]  # hover names the channel
    only = plots.plot_channel_std(stats, runs="p8")
    assert [t.name for t in only.data] == ["plain-8 channels", "plain-8 pooled"]
    assert only.data[0].x[0] == 0  # one run: no offset
    with pytest.raises(ValueError, match="no 'response_channel_std' rows"):
        plots.plot_channel_std(stats[stats["metric"] == "response_std"])


def test_bn_check_scatter_against_the_diagonal():
    table = pd.DataFrame({
        "run_id": ["a"] * 3 + ["b"] * 2, "arch": ["resnet"] * 3 + ["plain"] * 2, "depth": [20] * 3 + [8] * 2,
        "norm": "batch", "shortcut": ["A"] * 3 + ["none"] * 2, "seed": -1,
        "layer": ["bn1", "layer1.0.bn1", "layer1.0.bn2", "bn1", "layer1.0.bn1"], "layer_index": [0, 1, 2, 0, 1],
        "measured": [0.9, 0.5, 0.3, 1.2, 1.0], "predicted": [1.0, 0.5, 0.25, 1.1, 1.0],
    })
    fig = plots.plot_bn_check(table)
    assert [t.name for t in fig.data] == ["plain-8", "ResNet-20", "measured = predicted"]
    res = trace(fig, "ResNet-20")
    np.testing.assert_array_equal(res.x, [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(res.y, [0.9, 0.5, 0.3])
    np.testing.assert_allclose([c[2] for c in res.customdata], [0.9, 1.0, 1.2])  # hover: the ratio
    assert res.customdata[1][0] == "layer1.0.bn1"
    diag = trace(fig, "measured = predicted")
    assert list(diag.x) == list(diag.y) and diag.x[0] < 0.25 and diag.x[-1] > 1.2
    with pytest.raises(ValueError, match=r"missing column\(s\) \['measured'\]"):
        plots.plot_bn_check(table.drop(columns=["measured"]))
    with pytest.raises(ValueError, match="cross-check table is empty"):
        plots.plot_bn_check(table.iloc[:0])


def test_error_vs_depth_overlays_the_published_cifar10_errors(train):
    fig = plots.plot_error_vs_depth(train)
    he = trace(fig, "He et al. 2015, Table 6: ResNet test error, CIFAR-10 test set")
    assert list(he.x) == [20, 32, 44, 56, 110, 1202] and list(he.y) == [8.75, 7.51, 7.17, 6.97, 6.43, 7.93]
    assert he.customdata[4] == "ResNet-110: 6.43 % (best of 5 runs; mean 6.61 ± 0.16)"
    mean110 = trace(fig, "He et al. 2015, Table 6: ResNet-110 mean ± std of 5 runs")
    assert list(mean110.y) == [6.61] and mean110.error_y.value == 0.16
    aka = trace(fig, "akamaster/pytorch_resnet_cifar10 README: ResNet test error, CIFAR-10 test set")
    assert list(aka.x) == [20, 32, 44, 56, 110, 1202] and list(aka.y) == [8.27, 7.37, 6.90, 6.61, 6.32, 6.18]
    note = fig.layout.annotations[0].text
    assert "not these runs' data" in note and "best of 5 runs" in note  # a digits run is never read as CIFAR-10
    assert fig.layout.xaxis.type == "log" and 1202 in fig.layout.xaxis.tickvals


def test_seeds_are_aggregated_mean_and_band():
    runs = [SyntheticRun("resnet", 20, seed=s) for s in (0, 1, 2)] + [SyntheticRun("plain", 20)]
    train = synthetic.train_frame(runs, steps=(0, 100, 200), eval_every=100)
    train["clean_train_error"] = np.where(train["step"] % 100 == 0, train["train_error"] / 2, np.nan)
    fig = plots.plot_training_curves(train)
    named = [t.name for t in fig.data if t.showlegend is not False]
    assert named == ["plain-20 train", "plain-20 clean train", "plain-20 test",
                     "ResNet-20 train", "ResNet-20 clean train", "ResNet-20 test"]
    res = train[train["arch"] == "resnet"].pivot(index="step", columns="seed", values="test_error")
    np.testing.assert_allclose(trace(fig, "ResNet-20 test").y, 100 * res.mean(axis=1).to_numpy())
    assert list(trace(fig, "ResNet-20 test").customdata) == [3, 3, 3]
    bands = [t for t in fig.data if t.fill == "tonexty"]
    assert len(bands) == 3  # train, clean train and test of the ResNet (one seed of plain: no band)
    assert trace(fig, "ResNet-20 clean train").line.dash == "dot"
    assert "clean training (dotted)" in fig.layout.title.text
    assert "the mean over three seeds, band from min to max" in fig.layout.annotations[0].text
    depth = plots.plot_error_vs_depth(train, paper=False)
    per_seed = [t for t in depth.data if t.name == "ResNet test per seed"]
    assert len(per_seed) == 1 and len(per_seed[0].y) == 3


def test_axes_read_cleanly(stats):
    flat = stats[stats["metric"] == "response_std"].copy()
    flat["value"] = 1.0 + 1e-4 * np.sin(np.arange(len(flat)))  # noise around 1: the axis must not zoom into it
    fig = plots.plot_response_std(flat)
    lo, hi = fig.layout.yaxis.range
    assert lo <= 0.95 and hi >= 1.05 and "%{y:.5g}" in fig.data[0].hovertemplate
    assert [s.y0 for s in fig.layout.shapes] == [1.0]  # BN at initialisation
    assert fig.layout.xaxis.tickformat == "d"
    grads = plots.plot_gradient_flow(stats)
    assert grads.layout.yaxis.exponentformat == "power" and grads.layout.yaxis.dtick == 1
    blocks = plots.plot_profile(stats, "branch_ratio", depth=20)
    assert blocks.layout.xaxis.dtick == 1 and blocks.layout.xaxis.tickformat == "d"  # 0, 1, 2: never 0.5
    at_init = plots.plot_profile(stats[stats["step"] == 0], "grad_norm")
    assert "step" not in at_init.layout.title.text


def test_heatmaps_of_the_report_each_show_their_own_run_and_say_so(stats):
    figs, _ = plots.standard_figures(stats)
    maps = {k: f for k, f in figs.items() if k.startswith("heatmap_")}
    assert len(maps) == 3 and len({f.data[0].zmin for f in maps.values()}) == 3
    assert all(f.data[0].colorbar.title.text for f in maps.values())
    assert all("this run's own range" in f.layout.annotations[-1].text for f in maps.values())
    shared = plots.plot_heatmap(stats, "response_std", run="resnet20-batch-s0",
                                zrange=heatmap_range(stats, "response_std"))  # compared on purpose: one scale
    assert shared.data[0].zmin is not None and "shared by the runs compared" in shared.layout.annotations[-1].text


def test_variants_the_metadata_cannot_tell_apart_get_short_names_and_own_colours():
    ids = [f"digits-resnet8-none-scA-{v}-w8-s0" for v in ("skipinit", "rezero", "fixup")]
    runs = [SyntheticRun("resnet", 8, norm="none", run_id=i) for i in ids]
    train = synthetic.train_frame(runs, steps=(0, 100), eval_every=100)
    fig = plots.plot_training_curves(train, arch="resnet")
    named = {t.name: t.line.color for t in fig.data}
    assert set(named) == {f"ResNet-8 (norm=none) {v} {k}" for v in ("skipinit", "rezero", "fixup")
                          for k in ("train", "test")}
    assert len({named[f"ResNet-8 (norm=none) {v} test"] for v in ("skipinit", "rezero", "fixup")}) == 3
    assert fig.layout.title.text.startswith("ResNet nets: training")  # 02's plain and ResNet figures differ


def test_fig7_defaults_to_the_eval_mode_metric_and_says_which(stats):
    evals = stats[stats["metric"] == "response_std"].assign(metric="response_std_eval")
    evals["value"] = evals["value"] * 0.5
    both = pd.concat([stats, evals], ignore_index=True)
    fig = plots.plot_response_std(both)
    assert fig.layout.yaxis.title.text == METRIC_TABLE["response_std_eval"].axis_title
    np.testing.assert_allclose(trace(fig, "ResNet-20").y, 0.5 * trace(plots.plot_response_std(stats), "ResNet-20").y)
    assert "eval mode" in fig.layout.annotations[0].text and "one seed (0)" in fig.layout.annotations[0].text
    old = plots.plot_response_std(stats)  # a table without the eval rows: train mode, and the caption says so
    assert "train mode" in old.layout.annotations[0].text and "no eval-mode rows" in old.layout.annotations[0].text


def test_fig7_overlays_the_gamma_beta_prediction():
    """The dashed overlay is sqrt(mean γ² + var β) per BN layer, which equals the train-mode response std the
    Recorder measures on the same batch (an independent check of what is drawn), in the run's colour."""
    import torch

    from resviz import Recorder, cifar_resnet
    from resviz.analysis.bn_check import predicted_response_std

    torch.manual_seed(0)
    model = cifar_resnet(8, width=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
                m.bias.normal_(0, 0.3)
    with Recorder(model, every=1, metrics=["response_std"], run_info={"run_id": "r8"}) as rec:
        model(torch.randn(16, 3, 32, 32))
        rec.end_step(0)
    stats = rec.frame()
    predicted = predicted_response_std(model)
    fig = plots.plot_response_std(stats, prediction={"ResNet-8": predicted})
    measured = [t for t in fig.data if not t.name.endswith("γ/β prediction")]
    overlay = [t for t in fig.data if t.name.endswith("γ/β prediction")]
    assert len(measured) == 1 and len(overlay) == 1 and overlay[0].line.dash == "dash"
    assert overlay[0].line.color == measured[0].line.color
    np.testing.assert_allclose(overlay[0].y, measured[0].y, rtol=2e-3)  # train mode: exact up to BN's eps
    assert "γ/β prediction" in fig.layout.annotations[-1].text
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['predicted'\]"):
        plots.plot_response_std(stats, prediction={"ResNet-8": predicted.drop(columns="predicted")})
