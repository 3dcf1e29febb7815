"""Signal propagation at init: metrics against direct computation, growth against the derivation, branch inits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import all_hooks_empty
from resviz import schema
from resviz.analysis.signal import (
    DEFAULT_VARIANTS,
    VARIANTS,
    border_factor,
    branch_init_scales,
    branch_scales,
    channel_stats,
    gaussian_images,
    growth_check,
    growth_rates,
    mean_field_second_moments,
    second_moments,
    signal_at_init,
    signal_hooks,
    signal_propagation,
)
from resviz.models import cifar_resnet, iter_blocks


def test_channel_stats_against_numpy():
    x = torch.randn(6, 5, 4, 3) * torch.arange(1, 6).view(1, 5, 1, 1) + torch.arange(5).view(1, 5, 1, 1)
    a = x.numpy().transpose(1, 0, 2, 3).reshape(5, -1)  # (C, N*H*W)
    sq_mean, var = channel_stats(x).tolist()
    assert sq_mean == pytest.approx(np.mean(a.mean(1) ** 2), rel=1e-5)
    assert var == pytest.approx(np.mean(a.var(1)), rel=1e-5)
    # their sum is the pooled second moment
    assert sq_mean + var == pytest.approx(float(np.mean(a**2)), rel=1e-5)


def _capture(model, x, point):
    seen = {}
    hooks = [getattr(b, point).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o.clone()))
             for _, _, name, b in iter_blocks(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_table_is_tidy_and_matches_an_independent_capture():
    torch.manual_seed(0)
    model = cifar_resnet(14, width=8).eval()
    running = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 3, 16, 16)
    frame = signal_propagation(model, x, points=("probe_out", "probe_branch", "probe_skip"), seed=3)
    schema.validate(frame)
    assert len(frame) == 6 * 3 * 2
    assert set(frame["metric"]) == {"channel_sq_mean", "channel_var"}
    row = frame[(frame["layer"] == "layer2.1.probe_out") & (frame["metric"] == "channel_var")].iloc[0]
    assert (row["layer_index"], row["stage"], row["block"], row["seed"], row["run_id"]) == (3, 2, 1, 3, "resnet14-batch")
    # the same numbers from tensors captured in train mode (batch statistics) by a plain hook
    model.train()
    captured = _capture(model, x, "probe_out")
    model.load_state_dict(running)
    model.eval()
    out = captured["layer2.1"].numpy().transpose(1, 0, 2, 3).reshape(captured["layer2.1"].shape[1], -1)
    assert row["value"] == pytest.approx(float(np.mean(out.var(1))), rel=1e-4)
    # no hook left behind, running statistics and eval mode untouched
    assert not all_hooks_empty(model)
    assert all(torch.equal(running[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())


def test_hooks_are_removed_after_an_error():
    model = cifar_resnet(8, width=8)
    with pytest.raises(RuntimeError, match="boom"), signal_hooks(model) as store:
        model(torch.randn(2, 3, 8, 8))
        assert len(store) == 3 * 2
        raise RuntimeError("boom")
    assert not all_hooks_empty(model)


def test_bad_input():
    model = cifar_resnet(8, width=8)
    with pytest.raises(ValueError, match=r"mode='test' is unknown; use 'train' \(batch statistics\) or 'eval'"):
        signal_propagation(model, torch.randn(4, 3, 8, 8), mode="test")
    with pytest.raises(ValueError, match=r"point 'probe_in' is unknown; use probe_out, probe_branch"):
        signal_propagation(model, torch.randn(4, 3, 8, 8), points=["probe_in"])
    with pytest.raises(ValueError, match=r"inputs must be a batch \(B >= 2, C, H, W\), got shape \(3, 8, 8\)"):
        signal_propagation(model, torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"branch_init='fixup' with norm='batch' makes no sense: .*use norm='none'"):
        cifar_resnet(8, branch_init="fixup")
    with pytest.raises(ValueError, match=r"a plain net has no skip path: use plain=False"):
        cifar_resnet(8, plain=True, branch_init="rezero")


def test_border_factor():
    assert border_factor(32) == pytest.approx((94 / 96) ** 2)
    assert border_factor(32, stride=2) == pytest.approx((47 / 48) ** 2)
    # brute force: count in-bounds taps of a 3x3, padding-1 conv on an 8x8 map
    inside = [(0 <= i + di < 8) and (0 <= j + dj < 8) for i in range(8) for j in range(8)
              for di in (-1, 0, 1) for dj in (-1, 0, 1)]
    assert border_factor(8) == pytest.approx(sum(inside) / len(inside))


def _pooled_log_ratios(depth, *, plain, seeds=6):
    within, down = [], []
    for s in range(seeds):
        torch.manual_seed(s)
        model = cifar_resnet(depth, plain=plain, norm="none", width=16)
        v = second_moments(signal_propagation(model, torch.randn(64, 3, 32, 32), seed=s))
        logs = np.diff(np.log(v["second_moment"].to_numpy()))
        is_within = v["block"].to_numpy()[1:] > 0
        within += list(logs[is_within])
        down += list(logs[~is_within])
    return math.exp(np.mean(within)), math.exp(np.mean(down))


def _mean_field_ratios(depth, *, plain):
    mf = mean_field_second_moments(depth, plain=plain)
    logs = np.diff(np.log(mf["second_moment"].to_numpy()))
    is_within = mf["block"].to_numpy()[1:] > 0
    return math.exp(logs[is_within].mean()), math.exp(logs[~is_within].mean())


def test_unnormalised_growth_matches_the_derivation():
    """He init, no norm, post-activation blocks: E[x^2] grows ~2.2x per block (not 2x: the ReLU after the
    sum), ~1.5x at option-A downsampling blocks; a plain net keeps it (times the border factor)."""
    res_within, res_down = _pooled_log_ratios(32, plain=False)
    plain_within, _ = _pooled_log_ratios(32, plain=True)
    mf_within, mf_down = _mean_field_ratios(32, plain=False)
    mf_plain, _ = _mean_field_ratios(32, plain=True)
    assert 2.1 < mf_within < 2.2 and 1.45 < mf_down < 1.55 and 0.80 < mf_plain < 0.84  # the derivation
    assert 1.5 < res_within < 3.0  # exact bounds of E[relu(x + F)^2] / E[x^2]
    assert res_within == pytest.approx(mf_within, rel=0.10)
    assert 1.0 < res_down < 2.0 and res_down < res_within
    assert plain_within == pytest.approx(mf_plain, rel=0.10)


def test_batchnorm_branch_stays_at_one_skip_grows_linearly():
    torch.manual_seed(0)
    model = cifar_resnet(56, width=16)
    frame = signal_propagation(model, torch.randn(64, 3, 32, 32))
    branch = second_moments(frame, "probe_branch")["channel_var"]
    assert branch.to_numpy() == pytest.approx(1.0, abs=1e-3)  # BN (gamma 1, beta 0) output, batch statistics
    out = second_moments(frame)
    stage1 = out[out["stage"] == 1]
    slope, intercept = np.polyfit(stage1["block"], stage1["second_moment"], 1)
    fit = slope * stage1["block"] + intercept
    r2 = 1 - ((stage1["second_moment"] - fit) ** 2).sum() / ((stage1["second_moment"] - stage1["second_moment"].mean()) ** 2).sum()
    assert r2 > 0.98  # linear, not exponential
    mf = mean_field_second_moments(56, norm="batch")
    mf_slope = np.polyfit(mf["block"][mf["stage"] == 1], mf["second_moment"][mf["stage"] == 1], 1)[0]
    assert 0.6 < mf_slope < 1.0  # the derivation: a little under +1 per block
    assert slope == pytest.approx(mf_slope, rel=0.15)
    rates = growth_rates(frame)
    assert list(rates["stage"]) == [1, 2, 3] and (rates["slope"] > 0.6).all() and (rates["slope"] < 1.0).all()


@pytest.mark.parametrize("branch_init", ["skipinit", "rezero", "fixup"])
def test_branch_inits_start_as_the_identity(branch_init):
    torch.manual_seed(0)
    model = cifar_resnet(14, norm="none" if branch_init == "fixup" else "batch", branch_init=branch_init, width=8)
    x = torch.randn(8, 3, 16, 16)
    skip, out = _capture(model, x, "probe_skip"), _capture(model, x, "probe_out")
    for name in skip:
        expected = skip[name] if branch_init == "rezero" else torch.relu(skip[name])
        assert torch.equal(out[name], expected), name
    frame = signal_propagation(model, x)
    branch = frame[frame["layer"].astype(str).str.endswith("probe_branch")]
    assert (branch["value"] == 0).all()  # branch scale 0 (SkipInit / ReZero) or zero last conv (Fixup)


def test_fixup_rescales_the_branches():
    torch.manual_seed(0)
    model = cifar_resnet(20, norm="none", branch_init="fixup")
    scales = branch_init_scales(model)
    assert len(scales) == 9
    assert scales["conv1_std_over_he"].to_numpy() == pytest.approx(9**-0.5, rel=0.1)  # L = 9 blocks
    assert (scales["conv2_abs_max"] == 0).all() and (scales["branch_scale"] == 1).all()
    assert torch.count_nonzero(model.linear.weight) == 0 and torch.count_nonzero(model.linear.bias) == 0
    he = branch_init_scales(cifar_resnet(20, norm="none"))
    assert he["conv1_std_over_he"].to_numpy() == pytest.approx(1.0, rel=0.1) and he["branch_scale"].isna().all()


def test_branch_scales_track_the_parameter():
    model = cifar_resnet(14, branch_init="rezero", width=8)
    scales = branch_scales(model)
    assert list(scales) == [name for *_, name, _ in iter_blocks(model)] and set(scales.values()) == {0.0}
    with torch.no_grad():
        model.layer2[1].branch_scale.fill_(0.25)
    assert branch_scales(model)["layer2.1"] == 0.25
    assert branch_scales(cifar_resnet(14, width=8)) == {}


# ---------------------------------------------------------------------------------------------
# Brock et al.'s comparison at init, and De & Smith's argument against the measurement
# ---------------------------------------------------------------------------------------------
def test_signal_at_init_one_run_per_variant_and_seed():
    frame = signal_at_init(8, width=4, n_images=8, image_size=8, seeds=2, seed=5)
    assert list(dict.fromkeys(frame["run_id"])) == list(DEFAULT_VARIANTS)
    assert set(frame["seed"]) == {5, 6}
    fixup = frame[(frame["run_id"] == "Fixup") & (frame["seed"] == 6)]
    assert set(fixup["norm"]) == {"none"} and len(fixup) == 3 * 2 * 2  # 3 blocks x 2 points x 2 metrics
    torch.manual_seed(6)  # the same net and images, measured directly
    direct = signal_propagation(cifar_resnet(8, width=4, norm="none", branch_init="fixup"),
                                gaussian_images(8, 8, seed=5), run_id="Fixup", seed=6)
    np.testing.assert_allclose(fixup["value"].to_numpy(), direct["value"].to_numpy())
    with pytest.raises(ValueError, match=r"variant 'NF-ResNet' is unknown; use one of BN-ResNet"):
        signal_at_init(8, ["NF-ResNet"])


def test_growth_check_against_the_predictions():
    frame = signal_at_init(20, tuple(VARIANTS), width=8, n_images=32, image_size=16, seeds=2)
    table = growth_check(frame, image_size=16).set_index("variant")
    assert list(table.index) == list(VARIANTS)
    for identity in ("SkipInit", "ReZero", "Fixup"):  # every block the identity: E[x^2] unchanged, exactly
        assert table.loc[identity, "measured"] == pytest.approx(1.0, abs=1e-6)
        assert (table.loc[identity, "de_smith"], table.loc[identity, "mean_field"]) == (1.0, 1.0)
    mf = mean_field_second_moments(20, norm="none", image_size=16)  # the prediction, recomputed here
    y, same = mf["second_moment"].to_numpy(), mf["stage"].to_numpy()[1:] == mf["stage"].to_numpy()[:-1]
    expected = math.exp(np.log(y[1:][same] / y[:-1][same]).mean())
    # the measurement, recomputed from the raw rows: E[x^2] at the outputs, averaged over the two seeds
    def pooled(run):
        rows = frame[(frame["run_id"] == run) & frame["layer"].str.endswith(".probe_out")]
        e = rows.groupby(["layer_index", "stage", "block"], observed=True)["value"].sum() / 2  # (sq_mean + var)
        return e.reset_index()

    e = pooled("ResNet, no norm")
    y, same = e["value"].to_numpy(), e["stage"].to_numpy()[1:] == e["stage"].to_numpy()[:-1]
    row = table.loc["ResNet, no norm"]
    assert row["de_smith"] == 2.0 and row["mean_field"] == pytest.approx(expected)
    assert row["measured"] == pytest.approx(math.exp(np.log(y[1:][same] / y[:-1][same]).mean()))
    assert 1.5 < row["measured"] < 3.0  # the exact bounds of E[relu(x + F)^2] / E[x^2] (2.1-2.4 on average)
    assert row["measured_over_mean_field"] == pytest.approx(row["measured"] / row["mean_field"])
    e = pooled("BN-ResNet")
    first = e[e["stage"] == 1]
    bn = table.loc["BN-ResNet"]
    assert bn["quantity"].startswith("increase per block") and bn["de_smith"] == 1.0
    assert bn["measured"] == pytest.approx(np.polyfit(first["block"], first["value"], 1)[0])
    assert 0.5 < bn["mean_field"] < 1.0 and 0.3 < bn["measured"] < 1.5  # a little under +1 per block
    assert table.loc["plain, no norm", "de_smith"] == 1.0 and table.loc["plain, no norm", "measured"] < 1.0
