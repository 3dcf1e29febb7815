"""resviz.measure: held-out eval-mode response std and clean training error against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import all_hooks_empty
from resviz import schema
from resviz.measure import clean_train_error, fixed_subset, heldout_response_std
from resviz.models import cifar_resnet
from resviz.probes import Recorder

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _by_hand(images_u8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images_u8.float() / 255 - mean) / std


def _trained_a_little(model: nn.Module, steps: int = 3) -> nn.Module:
    """Running statistics and γ/β away from their init, so eval mode differs from train mode."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for s in range(steps):
        x = _by_hand(_images(16, seed=100 + s)) * 1.5 + 0.3
        F.cross_entropy(model(x), torch.arange(16) % 10).backward()
        opt.step()
        opt.zero_grad()
    return model


def test_fixed_subset_is_deterministic_distinct_and_sorted():
    a = fixed_subset(1000, 50)
    assert torch.equal(a, fixed_subset(1000, 50)) and len(a) == 50 and len(set(a.tolist())) == 50
    assert torch.equal(a, a.sort().values) and int(a.min()) >= 0 and int(a.max()) < 1000
    assert not torch.equal(a, fixed_subset(1000, 50, seed=1))
    assert torch.equal(fixed_subset(7, 50), torch.arange(7))
    with pytest.raises(ValueError, match=r"n=0 must be an integer >= 1"):
        fixed_subset(10, 0)
    with pytest.raises(ValueError, match=r"total=2.5 must be an integer >= 1"):
        fixed_subset(2.5, 1)


def test_heldout_response_std_is_the_eval_mode_std_of_each_bn_output():
    torch.manual_seed(0)
    model = _trained_a_little(cifar_resnet(8, width=8))
    model.train()
    images = _images(32)
    frame = heldout_response_std(model, images, MEAN, STD, run_info={"run_id": "r", "seed": 3}, step=7, epoch=0.5)
    schema.validate(frame)
    assert set(frame["metric"].astype(str)) == {"response_std_eval"}
    assert model.training and all(m.training for m in model.modules())  # train mode restored
    # by hand: every BN output's std (unbiased, pooled over N, C, H, W) with running statistics
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    model.eval()
    seen = _bn_output_stds(model, _by_hand(images))
    got = dict(zip(frame["layer"].astype(str), frame["value"]))
    assert set(got) == set(bns) and len(frame) == len(bns)
    for name, value in seen.items():
        assert got[name] == pytest.approx(value, rel=1e-4), name
    # eval mode really is used: train mode gives other numbers after training moved the running stats
    assert any(abs(got[n] - v) > 1e-3 for n, v in _train_mode_std(model, images).items())
    assert set(frame["step"]) == {7} and set(frame["epoch"]) == {0.5}
    assert set(frame["run_id"].astype(str)) == {"r"} and set(frame["seed"]) == {3}
    assert set(frame["arch"].astype(str)) == {"resnet"} and set(frame["depth"]) == {8}


def _bn_output_stds(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Every BatchNorm2d output's std (unbiased, pooled over N, C, H, W) in one forward pass of `x`, as the model's
    modes are."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.double().std().item()))
             for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _train_mode_std(model, images):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    seen = _bn_output_stds(model, _by_hand(images))
    model.load_state_dict(state)
    return seen


def test_heldout_response_std_inside_a_training_recorder_leaves_it_alone():
    torch.manual_seed(1)
    model = _trained_a_little(cifar_resnet(8, width=8))
    images = _images(16, seed=5)
    with Recorder(model, every=1) as rec:  # the training loop's Recorder holds the norm layers
        rec.begin_step(0)
        model(_by_hand(_images(16, seed=9))).sum().backward()
        rec.end_step(0)
        with rec.paused():
            inside = heldout_response_std(model, images, MEAN, STD, step=1)
        weights_then = {k: v.clone() for k, v in model.state_dict().items()}
        rec.begin_step(1)
        model(_by_hand(_images(16, seed=9))).sum().backward()
        rec.end_step(1)
    twin = cifar_resnet(8, width=8)
    twin.load_state_dict(weights_then)
    alone = heldout_response_std(twin, images, MEAN, STD, step=1)  # the same weights, no Recorder around
    np.testing.assert_allclose(inside["value"].to_numpy(), alone["value"].to_numpy(), rtol=1e-6)
    train_rows = rec.frame()
    assert set(train_rows["step"]) == {0, 1} and "response_std_eval" not in set(train_rows["metric"].astype(str))
    assert len(train_rows[train_rows["metric"].astype(str) == "response_std"]) == 2 * len(inside)
    assert not all_hooks_empty(model)  # the training Recorder removed its hooks


def test_heldout_response_std_bad_batch():
    model = cifar_resnet(8, width=8)
    with pytest.raises(ValueError, match=r"images_u8 must be a batch \(N >= 2, 3, H, W\), got shape \(1, 3, 8, 8\)"):
        heldout_response_std(model, _images(1), MEAN, STD)


def test_clean_train_error_matches_a_hand_loop_in_eval_mode():
    torch.manual_seed(2)
    model = _trained_a_little(cifar_resnet(8, width=8), steps=5)
    model.train()
    images, labels = _images(40, seed=11), torch.arange(40) % 10
    got = clean_train_error(model, images, labels, MEAN, STD, batch_size=16)  # 3 batches, the last partial
    assert model.training and all(m.training for m in model.modules())
    wrong = 0
    model.eval()
    with torch.no_grad():
        for i in range(40):  # one image at a time: independent of batching
            wrong += int(model(_by_hand(images[i : i + 1])).argmax(1).item() != labels[i].item())
    model.train()
    assert got == pytest.approx(wrong / 40, abs=1e-12)
    assert 0 < got < 1 and not math.isnan(got)


def test_first_step_is_measured_with_running_statistics_calibrated_on_a_copy():
    torch.manual_seed(2)
    model = cifar_resnet(8, width=8)  # untrained: running mean 0, var 1, so plain eval mode is the unnormalised net
    images, calibration = _images(32, seed=3), _by_hand(_images(24, seed=4))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    frame = heldout_response_std(model, images, MEAN, STD, step=0, calibrate=calibration)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())  # the model is left alone
    # by hand: a copy whose BN running statistics are the calibration batch's statistics, then eval mode
    twin = cifar_resnet(8, width=8)
    twin.load_state_dict(buffers)
    for m in twin.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass sets the batch's statistics
            m.reset_running_stats()
    twin.train()
    with torch.no_grad():
        twin(calibration)
    twin.eval()
    got = dict(zip(frame["layer"].astype(str), frame["value"]))
    for name, value in _bn_output_stds(twin, _by_hand(images)).items():
        assert got[name] == pytest.approx(value, rel=1e-4), name
    plain = heldout_response_std(model, images, MEAN, STD, step=0)  # uncalibrated: grows along depth
    assert max(plain["value"]) > 2 * max(frame["value"])


@pytest.mark.slow
def test_resnet44_step_zero_eval_point_lies_within_its_later_points(tmp_path, one_thread):
    from resviz.train import TrainConfig, train

    config = TrainConfig(dataset="digits", depth=44, width=4, steps=40, batch_size=32, log_every=20, eval_every=20,
                         checkpoint_every=40, record_every=20, eval_batch_size=360, progress=False,
                         root=str(tmp_path / "data"))
    result = train(config, out=tmp_path / "runs")
    stats = pd.read_parquet(result.folder / "stats.parquet")
    ev = stats[stats["metric"].astype(str) == "response_std_eval"]
    first, later = ev[ev["step"] == 0]["value"], ev[ev["step"] > 0]["value"]
    assert len(first) == 43 and len(later) == 2 * 43
    assert later.min() <= first.min() and first.max() <= later.max(), (first.describe(), later.describe())
