"""Normalisation lab: the measured invariance grid, the normalisers against torch's, batch dependence, CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resviz.analysis.invariance import (
    NORMS,
    PAPER_TABLE,
    THEORY,
    TRANSFORMATIONS,
    batch_dependence,
    batch_dependence_nets,
    batch_stats_mode,
    digits_inputs,
    explain,
    explanation_table,
    invariance_flags,
    invariance_grid,
    measure_invariance,
    normalise,
    summarise_batch_dependence,
)
from resviz.cli import main
from resviz.models import cifar_resnet

# Ours (not in Ba et al.): RMSNorm divides each case's summed inputs by their root mean square, no centring.
RMS_DERIVED = dict(zip(TRANSFORMATIONS, (True, False, False, True, False, True)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measured_grid_equals_ba_table_1(seed):
    frame = measure_invariance(seed=seed)
    flags = invariance_flags(frame)
    for norm in ("batch", "weight", "layer"):
        assert flags[norm] == PAPER_TABLE[norm], norm
    assert flags["rms"] == RMS_DERIVED
    # a wide gap between round-off and a real change: the verdict does not hang on the tolerance
    inv = frame[frame["invariant"]]["relative_deviation"]
    var = frame[~frame["invariant"]]["relative_deviation"]
    assert inv.max() < 1e-12
    assert var.min() > 1e-3


def test_measurement_does_not_depend_on_the_input_source():
    rng = np.random.default_rng(5)
    acts = np.maximum(rng.normal(size=(64, 40)) @ rng.normal(size=(40, 48)), 0.0)  # ReLU features of a layer
    flags = invariance_flags(measure_invariance(inputs=acts, seed=3, hidden=16))
    assert {n: flags[n] for n in PAPER_TABLE} == PAPER_TABLE


def test_normalisers_match_torch():
    x = digits_inputs(n=50, seed=1)  # (50, 64) float64
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 64))
    gain, bias = rng.uniform(0.5, 2, 12), rng.normal(size=12)
    a = torch.tensor(x @ w.T)
    g, b = torch.tensor(gain), torch.tensor(bias)
    expected = {
        "batch": F.batch_norm(a, None, None, g, b, training=True, eps=1e-30),  # torch wants eps > 0
        "layer": F.layer_norm(a, (12,), eps=0.0) * g + b,
        "rms": F.rms_norm(a, (12,), eps=0.0) * g + b,
    }
    wn = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(64, 12, bias=False).double(), dim=0)
    with torch.no_grad():
        wn.parametrizations.weight.original0.fill_(1.0)  # g = 1: the layer computes a / ||w_i||
        wn.parametrizations.weight.original1.copy_(torch.tensor(w))
        expected["weight"] = wn(torch.tensor(x)) * g + b
    for norm in NORMS:
        got = normalise(norm, w, x, gain, bias)
        np.testing.assert_allclose(got, expected[norm].detach().numpy(), rtol=1e-9, atol=1e-9, err_msg=norm)


def test_subsets_and_bad_names():
    frame = measure_invariance(norms=["layer"], transformations="case_rescale")
    assert len(frame) == 1 and bool(frame["invariant"].iloc[0])
    assert frame["paper"].iloc[0] == PAPER_TABLE["layer"]["case_rescale"]
    with pytest.raises(ValueError, match=r"unknown transformation 'shear'; valid: weight_matrix_rescale, .*case_rescale"):
        measure_invariance(transformations=["shear"])
    with pytest.raises(ValueError, match=r"unknown norm 'group'; valid: batch, weight, layer, rms"):
        measure_invariance(norms=["group"])
    with pytest.raises(ValueError, match=r"inputs must be \(cases, features\)"):
        measure_invariance(inputs=np.zeros(5))


def test_grid_layout():
    grid = invariance_grid(measure_invariance())
    assert list(grid.index) == list(NORMS) and list(grid.columns) == list(TRANSFORMATIONS)
    assert grid.loc["layer", "weight_matrix_recenter"].startswith("yes (")
    assert grid.loc["batch", "case_rescale"].startswith("no (")


def test_batch_dependence_bn_changes_ln_does_not():
    torch.manual_seed(0)
    images = torch.randn(24, 3, 16, 16)
    nets = {"batch": cifar_resnet(8, norm="batch", width=8).eval(), "layer": cifar_resnet(8, norm="layer", width=8)}
    bn_before = {k: v.clone() for k, v in nets["batch"].state_dict().items()}
    frame = batch_dependence(nets, images, [1, 4, 16], draws=3)
    assert len(frame) == 2 * 3 * 3
    change = frame.groupby(["norm", "batch_size"])["max_change"].max()
    scale = frame.groupby("norm")["logit_scale"].first()
    assert change["batch", 1] == 0.0  # the example alone: nothing to depend on
    assert change["batch", 4] > 0.05 * scale["batch"] and change["batch", 16] > 0.05 * scale["batch"]
    assert change["layer"].max() < 1e-4 * scale["layer"]  # only float round-off
    # running statistics and train/eval flags are untouched
    after = nets["batch"].state_dict()
    assert all(torch.equal(bn_before[k], after[k]) for k in bn_before)
    assert not any(m.training for m in nets["batch"].modules())
    assert all(m.training for m in nets["layer"].modules())
    net = nets["batch"]
    with batch_stats_mode(net):
        assert net.training and net.bn1.training
    assert not net.training and not net.bn1.training


def test_batch_dependence_bad_input():
    net = cifar_resnet(8, width=8)
    with pytest.raises(ValueError, match=r"batch size 9 must be between 1 and the number of images \(4\)"):
        batch_dependence(net, torch.randn(4, 3, 8, 8), [2, 9])
    with pytest.raises(ValueError, match=r"example=4 is out of range for 4 images; use 0..3"):
        batch_dependence(net, torch.randn(4, 3, 8, 8), [2], example=4)


def test_cli_json_and_grid(capsys):
    assert main(["invariance", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == invariance_flags(measure_invariance())
    assert main(["invariance", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for name in (*NORMS, *TRANSFORMATIONS):
        assert name in out
    assert "yes (" in out and "no (" in out


def test_cli_bad_transformation(capsys):
    assert main(["invariance", "--transformations", "weight_matrix_rescale,shear"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resviz: error: unknown transformation 'shear'; valid:") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# the one-line explanations, and batch dependence of trained nets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_the_algebra_predicts_every_measured_cell(seed):
    """THEORY is the derivation written down; the measurement never reads it. They must agree everywhere."""
    frame = measure_invariance(seed=seed)
    table = explanation_table(frame)
    assert len(table) == len(NORMS) * len(TRANSFORMATIONS) and table["agrees"].all()
    assert list(table["norm"]) == [n for n in NORMS for _ in TRANSFORMATIONS]  # norm by norm, in order
    row = table[(table["norm"] == "rms") & (table["transformation"] == "W-matrix re-center")].iloc[0]
    assert (row["measured"], row["paper"]) == ("no", "—")
    row = table[(table["norm"] == "layer") & (table["transformation"] == "single-case re-scale")].iloc[0]
    assert (row["measured"], row["paper"]) == ("yes", "yes")
    # a wrong measurement would show as a disagreement
    flipped = frame.assign(invariant=~frame["invariant"])
    assert not explanation_table(flipped)["agrees"].any()


def test_explain_one_cell():
    assert explain("layer", "weight_matrix_recenter").startswith("invariant: ")
    assert explain("batch", "case_rescale").startswith("not invariant: ")
    assert set(THEORY) == set(NORMS) and all(set(v) == set(TRANSFORMATIONS) for v in THEORY.values())
    with pytest.raises(ValueError, match=r"unknown norm 'instance'; valid: batch, weight, layer, rms"):
        explain("instance", "case_rescale")
    with pytest.raises(ValueError, match=r"unknown transformation 'shear'; valid: weight_matrix_rescale"):
        explain("batch", "shear")


def test_batch_dependence_of_nets_normalises_each_net_and_labels_it():
    from resviz.analysis.nets import Net

    torch.manual_seed(0)
    bn, ln = cifar_resnet(8, norm="batch", width=8), cifar_resnet(8, plain=True, norm="layer", width=8)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    nets = [Net("a", bn, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)), Net("b", ln, (0.5,) * 3, (0.5,) * 3)]
    frame = batch_dependence_nets(nets, images, [1, 4], draws=2)
    assert list(pd.unique(frame["net"])) == ["ResNet-8, batch", "plain-8, layer"]
    assert list(frame["norm"].unique()) == ["batch", "layer"] and list(frame["arch"].unique()) == ["resnet", "plain"]
    # the same numbers as batch_dependence on images normalised by hand with the net's own mean/std
    x = (images.float() / 255 - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(
        1, 3, 1, 1)
    direct = batch_dependence({"ResNet-8, batch": bn}, x, [1, 4], draws=2)
    np.testing.assert_allclose(frame[frame["net"] == "ResNet-8, batch"]["max_change"], direct["max_change"])
    np.testing.assert_allclose(frame["relative_change"], frame["max_change"] / frame["logit_scale"])
    summary = summarise_batch_dependence(frame)
    at4 = frame[(frame["net"] == "ResNet-8, batch") & (frame["batch_size"] == 4)]
    row = summary[(summary["net"] == "ResNet-8, batch") & (summary["batch_size"] == 4)].iloc[0]
    assert row["max_change_pct"] == pytest.approx(100 * at4["relative_change"].max())
    assert row["mean_change_pct"] == pytest.approx(100 * at4["relative_change"].mean()) and row["draws"] == 2
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, 3, H, W\), got torch.float32"):
        batch_dependence_nets(nets, images.float(), [1])
    with pytest.raises(ValueError, match=r"no nets given"):
        batch_dependence_nets([], images, [1])
