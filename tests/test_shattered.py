"""Shattered gradients: correct per-input gradients, calibrated BN, and the plain-vs-residual decay with depth."""
from __future__ import annotations

import numpy as np
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
    lag1 = frame.groupby(["arch", "norm", "depth"])["autocorrelation"].mean()
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
    assert table.loc[("plain", "none"), 14] == pytest.approx(sub["autocorrelation"].mean())
    assert shattering_table(frame, "mean_correlation").loc[("resnet", "batch"), 8] == pytest.approx(
        frame[(frame["arch"] == "resnet") & (frame["norm"] == "batch") & (frame["depth"] == 8)][
            "mean_correlation"].mean())
    with pytest.raises(ValueError, match=r"value='lag2' is not a column"):
        shattering_table(frame, "lag2")
