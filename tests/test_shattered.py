"""Shattered gradients: correct per-input gradients, calibrated BN, and the plain-vs-residual decay with depth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from resviz.analysis.shattered import (
    calibrated_eval,
    correlation_matrices,
    gradient_correlation,
    input_gradients,
    line_inputs,
    shattering_table,
    shattering_vs_depth,
)
from resviz.models import cifar_resnet


def test_line_inputs_are_evenly_spaced_between_the_endpoints():
    a, b = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    line = line_inputs(5, start=a, end=b)
    assert line.shape == (5, 3, 8, 8)
    assert torch.allclose(line[0], a) and torch.allclose(line[-1], b, atol=1e-6)
    steps = (line[1:] - line[:-1]).flatten(1)
    assert torch.allclose(steps, ((b - a) / 4).flatten()[None].expand_as(steps), atol=1e-6)
    assert torch.equal(line_inputs(7, (3, 4, 4), seed=3), line_inputs(7, (3, 4, 4), seed=3))
    with pytest.raises(ValueError, match=r"n=1 points cannot make a line; use n >= 2"):
        line_inputs(1)
    with pytest.raises(ValueError, match=r"start \(3, 8, 8\) and end \(3, 4, 4\) must have the same shape"):
        line_inputs(4, start=a, end=torch.zeros(3, 4, 4))


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_input_gradients_match_one_input_at_a_time(norm):
    torch.manual_seed(0)
    model = cifar_resnet(8, norm=norm, width=8)
    line = line_inputs(6, (3, 8, 8))
    got = input_gradients(model, line, output=3)
    with calibrated_eval(model, line):
        for j in range(len(line)):
            x = line[j : j + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(x)[0, 3], x)  # alone in its batch: eval mode makes it independent
            torch.testing.assert_close(got[j], g.flatten(), rtol=1e-4, atol=1e-6)


def test_calibrated_eval_uses_the_batch_statistics_and_restores_everything():
    torch.manual_seed(0)
    model = cifar_resnet(8, width=8)
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        train_out = model(x)  # batch statistics (updates the running stats: snapshot after)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with calibrated_eval(model, x):
        assert not model.training and model.bn1.momentum is None
        with torch.no_grad():
            calibrated = model(x)
    # eval mode with the batch's own statistics reproduces train mode (running var is unbiased: ~1e-3 off)
    torch.testing.assert_close(calibrated, train_out, rtol=2e-2, atol=2e-2)
    assert model.training and model.bn1.momentum == 0.1
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_correlation_matrix_and_lags():
    torch.manual_seed(0)
    model = cifar_resnet(8, width=8)
    gc = gradient_correlation(model, line_inputs(20, (3, 8, 8)), max_lag=5)
    c = gc.correlation
    assert c.shape == (20, 20) and gc.gradients.shape == (20, 3 * 8 * 8)
    np.testing.assert_allclose(c, c.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-9)
    assert np.all(np.abs(c) <= 1 + 1e-9)
    g = gc.gradients / np.linalg.norm(gc.gradients, axis=1, keepdims=True)  # independent: from the gradients
    lag2 = np.mean([g[i] @ g[i + 2] for i in range(18)])
    assert list(gc.lags) == [1, 2, 3, 4, 5] and gc.autocorrelation[1] == pytest.approx(lag2, abs=1e-9)
    assert gc.lag1 == pytest.approx(gc.autocorrelation[0])
    with pytest.raises(ValueError, match=r"output=10 must be 'projection' or a logit index 0..9"):
        gradient_correlation(model, line_inputs(4, (3, 8, 8)), output=10)


def test_plain_gradients_shatter_with_depth_residual_ones_do_not():
    frame = shattering_vs_depth(depths=(8, 56), norms=("batch", "none"), seeds=2, width=8, n_inputs=64, image_size=16)
    assert len(frame) == 2 * 2 * 2 * 2
    lag1 = frame.groupby(["arch", "norm", "depth"])["cosine_lag1"].mean()
    # shallow nets: neighbouring inputs have nearly the same gradient
    assert all(lag1[arch, norm, 8] > 0.8 for arch in ("plain", "resnet") for norm in ("batch", "none"))
    # plain + BN at depth 56: white noise; its residual twin keeps most of the correlation
    assert abs(lag1["plain", "batch", 56]) < 0.15
    assert lag1["resnet", "batch", 56] > 0.4
    for norm in ("batch", "none"):
        plain_drop = lag1["plain", norm, 8] - lag1["plain", norm, 56]
        res_drop = lag1["resnet", norm, 8] - lag1["resnet", norm, 56]
        assert plain_drop > 2 * res_drop, norm
    with pytest.raises(ValueError, match=r"arch='vgg' is unknown; use 'plain' or 'resnet'"):
        shattering_vs_depth(archs=["vgg"])


def test_correlation_matrices_one_per_net_and_the_table():
    mats = correlation_matrices(8, width=4, n_inputs=10, image_size=8, seed=2)
    assert list(mats) == ["plain-8, BN", "plain-8, no norm", "ResNet-8, BN", "ResNet-8, no norm"]
    torch.manual_seed(2)  # the same net, built and measured directly
    model = cifar_resnet(8, plain=False, norm="none", width=4)
    direct = gradient_correlation(model, line_inputs(10, (3, 8, 8), seed=2), seed=2)
    np.testing.assert_allclose(mats["ResNet-8, no norm"].correlation, direct.correlation)
    for gc in mats.values():
        assert gc.correlation.shape == (10, 10) and np.allclose(np.diag(gc.correlation), 1.0)
    with pytest.raises(ValueError, match=r"arch='vgg' is unknown; use 'plain' or 'resnet'"):
        correlation_matrices(8, archs=("vgg",))

    frame = shattering_vs_depth(depths=(8, 14), seeds=2, width=4, n_inputs=10, image_size=8)
    table = shattering_table(frame)
    assert list(table.columns) == [8, 14] and len(table) == 4
    sub = frame[(frame["arch"] == "plain") & (frame["norm"] == "none") & (frame["depth"] == 14)]
    assert table.loc[("plain", "none"), 14] == pytest.approx(sub["cosine_lag1"].mean())
    assert shattering_table(frame, "mean_cosine").loc[("resnet", "batch"), 8] == pytest.approx(
        frame[(frame["arch"] == "resnet") & (frame["norm"] == "batch") & (frame["depth"] == 8)][
            "mean_cosine"].mean())
    with pytest.raises(ValueError, match=r"value='lag2' is not a column"):
        shattering_table(frame, "lag2")


# ---- Balduzzi et al.'s 1-D experiment ----------------------------------------------------------------------

from resviz.analysis.shattered import (  # noqa: E402
    BN_CALIBRATED,
    BN_TRAIN,
    NO_BN,
    SETTING_1D,
    SETTING_IMAGE,
    autocorrelation_1d,
    covariance_1d,
    fc_net,
    gradients_1d,
    gradients_1d_frame,
    line_1d,
    shattering_1d_vs_depth,
)


@pytest.mark.parametrize("arch", ["plain", "resnet"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_1d_gradients_match_central_finite_differences(arch, norm):
    net = fc_net(4, arch=arch, norm=norm, width=16, seed=3)
    x = line_1d(32)
    got = gradients_1d(net, x)
    assert got.shape == (32,) and net.training  # the net is put back in train mode
    h = 1e-6
    with calibrated_eval(net, x), torch.no_grad():  # the same fixed function: statistics of the line batch
        fd = ((net(x + h) - net(x - h)) / (2 * h))[:, 0].numpy()
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-8)
    assert np.ptp(got) > 0  # not a constant: the biases put kinks on the line


def test_autocorrelation_1d_against_numpy():
    rng = np.random.default_rng(0)
    g = rng.standard_normal(50)
    d = g - g.mean()
    expected = np.correlate(d, d, "full")[49:] / (d @ d)
    np.testing.assert_allclose(autocorrelation_1d(g, 10), expected[:11], atol=1e-12)
    noise = rng.standard_normal(4096)  # white noise: lag-1 ≈ 0 (sd 1/64); brown noise: ≈ 1
    assert abs(autocorrelation_1d(noise, 1)[1]) < 0.1 and autocorrelation_1d(np.cumsum(noise), 1)[1] > 0.95
    with pytest.raises(ValueError, match=r"max_lag=50 must be below the 50 points"):
        autocorrelation_1d(g, 50)


def test_1d_frames_are_tidy_and_labelled():
    frame = shattering_1d_vs_depth(depths=(1, 3), archs=("plain", "resnet"), norms=("none",), seeds=2, width=8,
                                   n_inputs=20, max_lag=4)
    assert list(frame.columns) == ["setting", "arch", "norm", "bn_mode", "depth", "seed", "lag", "autocorrelation"]
    assert set(frame["bn_mode"]) == {NO_BN}
    assert len(frame) == 2 * 2 * 2 * 5 and set(frame["setting"]) == {SETTING_1D}
    np.testing.assert_allclose(frame[frame["lag"] == 0]["autocorrelation"], 1.0)
    one = frame[(frame["arch"] == "resnet") & (frame["depth"] == 3) & (frame["seed"] == 1)]
    direct = autocorrelation_1d(gradients_1d(fc_net(3, arch="resnet", norm="none", width=8, seed=1), line_1d(20)), 4)
    np.testing.assert_allclose(one["autocorrelation"].to_numpy(), direct)
    image = shattering_vs_depth(depths=(8,), norms=("none",), archs=("plain",), width=4, n_inputs=6, image_size=8)
    assert set(image["setting"]) == {SETTING_IMAGE}
    with pytest.raises(ValueError, match=r"arch='vgg' is unknown; use 'plain' or 'resnet'"):
        fc_net(2, arch="vgg")
    with pytest.raises(ValueError, match=r"depth=0 must be an integer >= 1"):
        fc_net(0)
    with pytest.raises(ValueError, match=r"norm='layer' is unknown for the 1-D nets; use 'batch' or 'none'"):
        fc_net(2, norm="layer")


def test_1d_covariance_over_initialisations():
    frame = gradients_1d_frame(depths=(2,), archs=("plain",), norms=("batch",), seeds=3, width=8, n_inputs=12)
    assert list(frame.columns) == ["setting", "arch", "norm", "bn_mode", "depth", "seed", "x", "gradient"]
    assert len(frame) == 36
    cov = covariance_1d(frame)
    assert list(cov) == ["plain-2, BN"] and cov["plain-2, BN"].shape == (12, 12)
    grads = np.stack([gradients_1d(fc_net(2, arch="plain", norm="batch", width=8, seed=s), line_1d(12))
                      for s in range(3)])  # (seeds, n), measured directly
    centred = grads - grads.mean(0)
    np.testing.assert_allclose(cov["plain-2, BN"], centred.T @ centred / 2, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"plain-2 has 1 seed; a covariance over initialisations needs"):
        covariance_1d(frame[frame["seed"] == 0])


def test_1d_plain_bn_gradients_turn_to_white_noise_with_depth():
    """Balduzzi et al.'s main 1-D finding, with a margin far beyond seed noise (sd of a white-noise lag-1 ≈ 0.06)."""
    frame = shattering_1d_vs_depth(depths=(1, 24), archs=("plain",), norms=("batch",), seeds=2, width=64,
                                   max_lag=1)
    lag1 = frame[frame["lag"] == 1].set_index(["depth", "seed"])["autocorrelation"]
    assert all(lag1[1, s] > 0.9 for s in (0, 1))
    assert all(abs(lag1[24, s]) < 0.3 for s in (0, 1))


def test_1d_figure_draws_the_seed_mean_and_says_the_setting():
    from resviz.plots.shattered_1d import plot_shattering_1d

    frame = shattering_1d_vs_depth(depths=(1, 4), norms=("none",), seeds=2, width=8, n_inputs=16, max_lag=2)
    fig = plot_shattering_1d(frame)
    assert [t.name for t in fig.data] == ["plain, no norm", "ResNet, no norm"]
    lag1 = frame[(frame["lag"] == 1) & (frame["arch"] == "resnet")].groupby("depth")["autocorrelation"]
    np.testing.assert_allclose(fig.data[1].y, lag1.mean().to_numpy())
    np.testing.assert_allclose(fig.data[1].error_y.array, (lag1.max() - lag1.mean()).to_numpy())
    assert SETTING_1D in fig.layout.title.text and "2 seed(s)" in fig.layout.title.text
    with pytest.raises(ValueError, match=r"lag=5 is not in the frame"):
        plot_shattering_1d(frame, lag=5)


# ---- the two BN modes, curves with intervals, the paper's rates, kinks ---------------------------------------
from resviz.analysis import shattered_1d  # noqa: E402
from resviz.modes import batch_stats_mode  # noqa: E402


def test_train_mode_derivative_is_each_points_own_derivative_in_train_mode():
    """BN_TRAIN: d out_i / d x_i with the batch statistics moving with x_i — checked by central differences of
    the train-mode forward pass, point by point; BN_CALIBRATED differs from it (statistics held fixed); for a net
    without BN the two are one derivative. The net's running statistics are untouched."""
    net, x = fc_net(3, arch="plain", norm="batch", width=16, seed=1), line_1d(24)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train = gradients_1d(net, x, BN_TRAIN)
    with batch_stats_mode(net), torch.no_grad():
        for i in (0, 7, 23):
            e = torch.zeros_like(x)
            e[i] = 1e-6
            fd = float((net(x + e)[i, 0] - net(x - e)[i, 0]) / 2e-6)
            assert train[i] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not np.allclose(train, gradients_1d(net, x, BN_CALIBRATED), rtol=1e-3)
    plain = fc_net(3, arch="resnet", norm="none", width=16, seed=1)
    np.testing.assert_array_equal(gradients_1d(plain, x, BN_TRAIN), gradients_1d(plain, x, BN_CALIBRATED))
    with pytest.raises(ValueError, match="bn_mode='eval' is unknown"):
        gradients_1d(net, x, "eval")


def test_curves_carry_t_intervals_over_seeds():
    from scipy import stats

    frame = shattering_1d_vs_depth(depths=(2,), archs=("plain",), norms=("batch",), seeds=3, width=8, n_inputs=16,
                                   max_lag=3, bn_modes=(BN_CALIBRATED, BN_TRAIN))
    curves = shattered_1d.acf_curves(frame)
    assert len(curves) == 2 * 4 and set(curves["bn_mode"]) == {BN_CALIBRATED, BN_TRAIN}
    row = curves[(curves["bn_mode"] == BN_TRAIN) & (curves["lag"] == 2)].iloc[0]
    v = frame[(frame["bn_mode"] == BN_TRAIN) & (frame["lag"] == 2)]["autocorrelation"].to_numpy()
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (row["mean"], row["lo"], row["hi"], row["n"]) == (pytest.approx(v.mean()), pytest.approx(lo),
                                                             pytest.approx(hi), 3)


def test_decay_rates_recover_the_papers_forms():
    """A frame whose lag-1 follows 2^-L (plain) and L^-1/2 (ResNet) exactly gives the paper's rates back."""
    rows = []
    for depth in (1, 2, 3, 4, 16, 50):
        for arch, value in (("plain", 2.0 ** -depth), ("resnet", depth ** -0.5)):
            rows += [dict(arch=arch, norm="batch", bn_mode=BN_CALIBRATED, depth=depth, seed=s, lag=1,
                          autocorrelation=value) for s in (0, 1)]
    rates = shattered_1d.decay_rates(pd.DataFrame(rows)).set_index("arch")
    assert rates.loc["plain", "measured_rate"] == pytest.approx(-1.0)  # fitted on 2^-L > 0.1: depths 1..3
    assert rates.loc["plain", "fitted_depths"] == [1, 2, 3]
    assert rates.loc["resnet", "measured_rate"] == pytest.approx(-0.5)
    assert (rates.loc["plain", "paper_rate"], rates.loc["resnet", "paper_rate"]) == (-1.0, -0.5)


def test_kinks_count_the_units_that_switch_along_the_line():
    """Depth 1: a unit relu(w x + b) switches once on the line iff −b/w falls between two of its points — counted
    by hand. And the explanation of the unnormalised plain net: BN puts far more switches in the later layers."""
    net, x = fc_net(1, arch="plain", norm="none", width=32, seed=0), line_1d(64)
    w, b = net.layers[0].weight.detach()[:, 0], net.layers[0].bias.detach()
    cut = -b / w
    assert shattered_1d.kinks_1d(net, x).tolist() == [int(((cut > x.min()) & (cut < x.max())).sum())]
    table = shattered_1d.kinks_table({norm: fc_net(8, arch="plain", norm=norm, width=32, seed=0)
                                      for norm in ("none", "batch")}, line_1d(64)).set_index("net")
    assert table.loc["batch", "later_layers"] > 3 * table.loc["none", "later_layers"]


def test_panels_figure_matches_the_paper_and_names_the_bn_modes():
    from resviz.plots.shattered_1d import plot_shattering_panels

    panels = shattered_1d.PANELS
    assert [(a, d) for _, a, d in panels] == [("plain", 1), ("plain", 24), ("resnet", 50)]
    small = (("feedforward, depth 1", "plain", 1), ("ResNet, depth 3", "resnet", 3))
    kw = dict(norms=("batch",), seeds=2, width=8, n_inputs=12, bn_modes=(BN_CALIBRATED, BN_TRAIN))
    curves = shattered_1d.acf_curves(shattering_1d_vs_depth(depths=(1, 3), max_lag=3, **kw))
    grads = gradients_1d_frame(depths=(1, 3), **kw)
    fig = plot_shattering_panels(curves, grads, small)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:2] == ["feedforward, depth 1", "ResNet, depth 3"]
    assert "95 % interval over 2 seeds" in fig.layout.title.text
    assert [t.name for t in fig.data if t.showlegend] == [
        "plain, BN (calibrated eval)", "plain, BN (train, per point)", "ResNet, BN (calibrated eval)",
        "ResNet, BN (train, per point)"]
    assert "of 12 on [-2, 2]" in fig.layout.xaxis4.title.text
    means = [t for t in fig.data if t.name == "ResNet, BN (train, per point)" and t.customdata is not None]
    want = curves[(curves["arch"] == "resnet") & (curves["bn_mode"] == BN_TRAIN) & (curves["depth"] == 3)]
    want = want.sort_values("lag")
    np.testing.assert_allclose(means[0].y, want["mean"])
