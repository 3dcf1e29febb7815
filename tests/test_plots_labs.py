"""resviz.plots lab figures (invariance, norms, lesion, shattered, signal): every figure's numbers against the analysis frames it draws (small real inputs)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from resviz import synthetic
from resviz import plots
from resviz.plots.style import VARIANT_COLORS, label_color, short_run_names
from resviz.analysis import invariance, lesion, shattered, signal
from resviz.analysis.nets import Net
from resviz.models import cifar_resnet
from resviz.probes import Recorder

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def by_name(fig, name):
    (t,) = [t for t in fig.data if t.name == name]
    return t


# ----------------------------------------------------------------------------------- invariance grid
@pytest.fixture(scope="module")
def grid_frame() -> pd.DataFrame:
    return invariance.measure_invariance()


def test_invariance_grid_shows_the_measurement_beside_the_paper(grid_frame):
    fig = plots.plot_invariance_grid(grid_frame)
    measured, paper = fig.data
    assert list(measured.y) == list(invariance.NORMS)
    assert list(measured.x) == [invariance.TRANSFORMATION_LABELS[t] for t in invariance.TRANSFORMATIONS]
    flags = invariance.invariance_flags(grid_frame)
    for i, norm in enumerate(invariance.NORMS):
        for j, t in enumerate(invariance.TRANSFORMATIONS):
            assert measured.z[i][j] == float(flags[norm][t])
            assert measured.text[i][j].startswith("yes" if flags[norm][t] else "no")
            assert invariance.THEORY[norm][t][1] in measured.customdata[i][j]  # hover explains the cell
            if norm in invariance.PAPER_TABLE:
                assert paper.text[i][j] == ("yes" if invariance.PAPER_TABLE[norm][t] else "no")
            else:
                assert paper.text[i][j] == "not in<br>the paper"
    assert not any("≠" in cell for row in measured.text for cell in row)  # the measurement matches Table 1


def test_invariance_grid_marks_a_disagreement_and_refuses_other_tables(grid_frame):
    flipped = grid_frame.copy()
    hit = (flipped["norm"] == "layer") & (flipped["transformation"] == "case_rescale")
    flipped.loc[hit, "invariant"] = False
    fig = plots.plot_invariance_grid(flipped)
    i, j = invariance.NORMS.index("layer"), invariance.TRANSFORMATIONS.index("case_rescale")
    assert fig.data[0].text[i][j].startswith("no") and fig.data[0].text[i][j].endswith("≠")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['paper'\]; pass resviz.analysis.invariance"):
        plots.plot_invariance_grid(grid_frame.drop(columns="paper"))


def test_invariance_grid_reads_labels_and_explanations_from_the_frame(grid_frame):
    """A frame that carries `transformation_label` and `why` is drawn from its own columns (no analysis import)."""
    words = grid_frame.assign(
        transformation_label=[invariance.TRANSFORMATION_LABELS[t] for t in grid_frame["transformation"]],
        why=[f"because {n}/{t}" for n, t in zip(grid_frame["norm"], grid_frame["transformation"])],
    )
    measured, _ = plots.plot_invariance_grid(words).data
    assert list(measured.x) == [invariance.TRANSFORMATION_LABELS[t] for t in invariance.TRANSFORMATIONS]
    i, j = invariance.NORMS.index("rms"), invariance.TRANSFORMATIONS.index("dataset_recenter")
    assert "why: because rms/dataset_recenter" in measured.customdata[i][j]


# ----------------------------------------------------------------------------------- batch dependence
@pytest.fixture(scope="module")
def dependence() -> pd.DataFrame:
    torch.manual_seed(0)
    nets = [Net(f"n{i}", cifar_resnet(8, norm=norm, width=8), MEAN, STD) for i, norm in enumerate(("layer", "batch"))]
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    return invariance.batch_dependence_nets(nets, images, [1, 2, 4, 8], draws=3)


def test_batch_dependence_lines_bars_and_marker(dependence):
    fig = plots.plot_batch_dependence(dependence)
    labels = ["ResNet-8, batch", "ResNet-8, layer"]  # batch before layer, whatever the frame's order
    assert [t.name for t in fig.data[:2]] == labels
    pct = dependence.assign(p=100 * dependence["max_change"] / dependence["logit_scale"])
    for k, label in enumerate(labels):
        mine = pct[pct["net"] == label]
        np.testing.assert_allclose(fig.data[k].y, mine.groupby("batch_size")["p"].max().to_numpy())
        np.testing.assert_array_equal(fig.data[k].x, [1, 2, 4, 8])
        assert len(fig.data[2 + k].y) == len(mine)  # every draw as a dot
        bar = fig.data[4 + k]
        at2 = mine[mine["batch_size"] == 2]["p"]
        assert bar.y[0] == pytest.approx(at2.mean())  # default: the smallest batch size above 1
        assert bar.error_y.array[0] == pytest.approx(at2.max() - at2.mean())
        assert bar.error_y.arrayminus[0] == pytest.approx(at2.mean() - at2.min())
    assert fig.layout.shapes[0].x0 == 2
    assert fig.data[4].y[0] > 1 and fig.data[5].y[0] < 1e-3  # BN moves with its batch, LN does not
    fig8 = plots.plot_batch_dependence(dependence, batch_size=8)
    assert fig8.layout.shapes[0].x0 == 8 and "batch size 8" in fig8.layout.title.text
    with pytest.raises(ValueError, match=r"batch_size=3 was not measured; measured sizes: \[1, 2, 4, 8\]"):
        plots.plot_batch_dependence(dependence, batch_size=3)


# ----------------------------------------------------------------------------------- norm comparison
@pytest.fixture(scope="module")
def norm_runs():
    # a different seed per norm: the synthetic values differ between runs (they do not depend on the norm)
    runs = [(arch, 8, norm, seed) for seed, norm in enumerate(("none", "batch", "layer")) for arch in ("plain", "resnet")]
    return synthetic.stats_frame(runs, steps=(0, 50, 100)), synthetic.train_frame(runs, steps=tuple(range(0, 101, 10)),
                                                                                   eval_every=50)


def test_norm_comparison_one_column_per_norm(norm_runs):
    stats, metrics = norm_runs
    fig = plots.plot_norm_comparison(metrics, stats)
    assert [a.text for a in fig.layout.annotations] == ["norm = batch", "norm = layer", "norm = none"]
    # the layer-norm ResNet's response profile sits in column 2, row 2, with the table's last-step values
    layer_xaxis = {t.xaxis for t in fig.data if t.name == "ResNet-8" and t.mode == "lines+markers"}
    assert len(layer_xaxis) == 3
    rows = stats[(stats["run_id"] == "resnet8-layer-s2") & (stats["metric"] == "response_std") & (stats["step"] == 100)]
    (profile,) = [t for t in fig.data if t.name == "ResNet-8" and t.xaxis == "x5"]  # row 2, column 2
    np.testing.assert_allclose(profile.y, rows.sort_values("layer_index")["value"])
    train = metrics[metrics["run_id"] == "plain8-none-s0"]
    (curve,) = [t for t in fig.data if t.name == "plain-8 train" and t.xaxis == "x3"]  # row 1, column 3 (none)
    np.testing.assert_allclose(curve.y, 100 * train["train_error"].to_numpy())
    assert fig.layout.yaxis4.type == "log"  # response std on a log axis
    with pytest.raises(ValueError, match=r"missing column\(s\) \['norm'\]"):
        plots.plot_norm_comparison(metrics.drop(columns="norm"), stats)


def test_final_error_by_norm(norm_runs):
    _, metrics = norm_runs
    fig = plots.plot_final_error_by_norm(metrics)
    bars = by_name(fig, "ResNet-8 test")
    assert list(bars.x) == ["batch", "layer", "none"]
    for norm, y, seed in zip(bars.x, bars.y, (1, 2, 0)):
        run = metrics[metrics["run_id"] == f"resnet8-{norm}-s{seed}"]
        assert y == pytest.approx(100 * run["test_error"].dropna().iloc[-1])
    train = by_name(fig, "plain-8 train")
    assert train.y[0] == pytest.approx(100 * metrics[metrics["run_id"] == "plain8-batch-s1"]["train_error"].iloc[-1])


# ----------------------------------------------------------------------------------- lesion
@pytest.fixture(scope="module")
def lesions():
    torch.manual_seed(0)
    nets = [Net("res", cifar_resnet(14, width=8).eval(), MEAN, STD),
            Net("pl", cifar_resnet(8, plain=True, width=8).eval(), MEAN, STD)]
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    return lesion.lesion_nets(nets, images, labels, ks=(1, 2, 4), draws=2)


def test_lesion_single_and_random_panels(lesions):
    single, random = lesions
    fig = plots.plot_lesion(single, random)
    (line,) = [t for t in fig.data if t.name == "ResNet-14" and t.xaxis == "x"]
    mine = single[single["run_id"] == "res"].sort_values("position")
    np.testing.assert_allclose(line.y, 100 * mine["error"].to_numpy())
    assert [s == "diamond" for s in line.marker.symbol] == list(mine["downsample"])  # downsampling blocks
    intact = by_name(fig, "ResNet-14 intact")
    assert set(intact.y) == {100 * mine["baseline_error"].iloc[0]}
    (curve,) = [t for t in fig.data if t.name == "plain-8" and t.xaxis == "x2"]
    r = random[random["run_id"] == "pl"]
    assert list(curve.x) == [0, 1, 2]  # k = 4 > 3 blocks is left out for the plain net
    np.testing.assert_allclose(curve.y[1:], 100 * r.groupby("k")["error"].mean().to_numpy())
    assert curve.y[0] == pytest.approx(100 * r["baseline_error"].iloc[0])
    assert len(plots.plot_lesion(single).data) == 4  # no random panel: a line and the intact level per net
    with pytest.raises(ValueError, match=r"missing column\(s\) \['baseline_error'\]"):
        plots.plot_lesion(single.drop(columns="baseline_error"))


# ----------------------------------------------------------------------------------- shattered gradients
def test_shattering_and_correlation_heatmaps():
    frame = shattered.shattering_vs_depth(depths=(8, 14), seeds=2, width=4, n_inputs=12, image_size=8)
    fig = plots.plot_shattering(frame)
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["plain, BN", "plain, no norm", "ResNet, BN", "ResNet, no norm"]
    top = [t for t in fig.data if t.name == "ResNet, BN"]  # row 1, row 2
    mine = frame[(frame["arch"] == "resnet") & (frame["norm"] == "batch")]
    np.testing.assert_allclose(top[0].y, mine.groupby("depth")["cosine_lag1"].mean())
    np.testing.assert_allclose(top[1].y, mine.groupby("depth")["mean_cosine"].mean())
    np.testing.assert_allclose(top[0].error_y.array, mine.groupby("depth")["cosine_lag1"].max()
                               - mine.groupby("depth")["cosine_lag1"].mean())
    words = " ".join([fig.layout.title.text] + [a.text for a in fig.layout.annotations]).lower()
    assert "uncentred mean cosine similarity" in words and "autocorrelation" not in words

    mats = shattered.correlation_matrices(8, width=4, n_inputs=10, image_size=8)
    heat = plots.plot_gradient_correlation(mats)
    assert [t.name for t in heat.data] == list(mats) == ["plain-8, BN", "plain-8, no norm", "ResNet-8, BN",
                                                         "ResNet-8, no norm"]
    for t in heat.data:
        np.testing.assert_allclose(np.asarray(t.z), mats[t.name].correlation)
    assert heat.layout.coloraxis.cmin == -1 and heat.layout.coloraxis.cmax == 1
    heat_words = " ".join([heat.layout.title.text] + [a.text for a in heat.layout.annotations]).lower()
    assert "cosine similarity" in heat_words and "covariance" not in heat_words and "lag-1 r" not in heat_words
    lags = plots.plot_autocorrelation(mats)
    np.testing.assert_allclose(by_name(lags, "ResNet-8, BN").y, mats["ResNet-8, BN"].autocorrelation)
    with pytest.raises(ValueError, match=r"no results to draw"):
        plots.plot_gradient_correlation({})


# ----------------------------------------------------------------------------------- signal propagation
def test_signal_propagation_init_panels():
    frame = signal.signal_at_init(8, width=4, n_images=8, image_size=8, seeds=2)
    fig = plots.plot_signal_propagation_init(frame)
    bn = [t for t in fig.data if t.name == "BN-ResNet"]
    rows = frame[(frame["run_id"] == "BN-ResNet") & frame["layer"].str.endswith("probe_out")]
    wide = rows.groupby(["layer_index", "metric"], observed=True)["value"].mean().unstack()  # seeds averaged
    np.testing.assert_allclose(bn[0].y, wide["channel_sq_mean"] + wide["channel_var"])
    np.testing.assert_allclose(bn[1].y, wide["channel_sq_mean"])
    branch = frame[(frame["run_id"] == "BN-ResNet") & frame["layer"].str.endswith("probe_branch")
                   & (frame["metric"] == "channel_var")]
    np.testing.assert_allclose(bn[2].y, branch.groupby("layer_index")["value"].mean())
    zero = by_name(fig, "SkipInit (branch ≡ 0)")  # exact zeros are named, not drawn on the log axis
    assert all(v is None or np.isnan(v) for v in zero.y)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis3.type == "log"


def test_branch_scales_over_training():
    torch.manual_seed(0)
    model = cifar_resnet(8, norm="none", branch_init="rezero", width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    seen = []
    with Recorder(model, every=1, metrics=["branch_scale"], run_info={"run_id": "rz"}) as rec:
        for step in range(4):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            rec.end_step(step)
            seen.append(signal.branch_scales(model))  # before the update, as the Recorder reads it
            opt.step()
            opt.zero_grad()
    stats = rec.frame()
    fig = plots.plot_branch_scales(stats)
    assert [t.name for t in fig.data] == ["layer1.0", "layer2.0", "layer3.0"]
    for t in fig.data:
        np.testing.assert_array_equal(t.x, [0, 1, 2, 3])
        np.testing.assert_allclose(t.y, [s[t.name] for s in seen], rtol=1e-6)
    assert fig.data[0].y[0] == 0 and any(v != 0 for v in fig.data[0].y)  # ReZero starts at 0 and moves
    with pytest.raises(ValueError, match=r"no 'branch_scale' rows"):
        plots.plot_branch_scales(synthetic.stats_frame([("resnet", 8)], steps=(0,)))


def test_short_run_names_keep_what_tells_runs_apart():
    ids = [f"digits-resnet20-none-scA-{b}-w8-s0" for b in ("skipinit", "rezero", "fixup")]
    assert short_run_names(ids) == dict(zip(ids, ("skipinit", "rezero", "fixup")))
    assert short_run_names(["BN-ResNet", "SkipInit"]) == {"BN-ResNet": "BN-ResNet", "SkipInit": "SkipInit"}
    assert short_run_names(["a-b", "a-b-c"]) == {"a-b": "a-b", "a-b-c": "a-b-c"}  # "" would be no name
    assert label_color("fixup") == label_color("Fixup") == VARIANT_COLORS["Fixup"]
