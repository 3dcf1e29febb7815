"""What the training loop's gradients and optimiser contain: the recorded gradient norms leave weight decay out;
Fixup runs with its official trainer's rules (parameter groups, stem init, mixup), each checked against what that
code does."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resviz.models import cifar_resnet
from resviz.train import recipe, train
from helpers import tiny


def _grad_norms(folder) -> pd.DataFrame:
    stats = pd.read_parquet(folder / "stats.parquet")
    rows = stats[stats["metric"].astype(str) == "grad_norm"]
    return rows.set_index(["step", "layer"])["value"].sort_index()


def test_recorded_grad_norm_excludes_weight_decay(tmp_path, data_root):
    """Two runs that differ only in weight decay record the same gradient norms at the first step (same weights,
    same batch): the Recorder reads ∂L/∂W before SGD adds decay × W. At the next recorded step the weights
    differ, so so do the norms: the decay did act."""
    runs = {}
    for wd in (0.0, 5.0):
        config = tiny(data_root, steps=2, log_every=1, eval_every=2, checkpoint_every=2, record_every=1,
                      weight_decay=wd, record_metrics=("grad_norm",))
        runs[wd] = _grad_norms(train(config, out=tmp_path / f"wd{wd}").folder)
    first = {wd: g.loc[0] for wd, g in runs.items()}
    assert len(first[0.0]) > 10
    pd.testing.assert_series_equal(first[0.0], first[5.0], rtol=1e-6)
    second = {wd: g.loc[1] for wd, g in runs.items()}
    assert (abs(second[0.0] - second[5.0]) / second[0.0]).max() > 1e-3


# ---- Fixup as its official trainer runs it (hongyi-zhang/Fixup cifar/cifar_train.py, models/fixup_resnet_cifar.py)
def _official_group_sizes(blocks: int) -> tuple[int, int]:
    """What the official trainer's name rule puts in its two lr/10 groups for FixupResNet: 'bias' — bias1a, bias1b,
    bias2a, bias2b per block, the model's bias1 and bias2 and fc.bias; 'scale' — one per block."""
    return 4 * blocks + 3, blocks


def test_fixup_groups_follow_the_official_name_rule():
    model = cifar_resnet(20, norm="none", branch_init="fixup")
    groups = recipe.param_groups(model, recipe.groups_rule("auto", "fixup"))
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["bias", "scale", "others"]
    assert (len(by_name["bias"]["params"]), len(by_name["scale"]["params"])) == _official_group_sizes(9)
    assert by_name["bias"]["lr_factor"] == by_name["scale"]["lr_factor"] == 0.1 and by_name["others"]["lr_factor"] == 1
    assert sorted(p.numel() for p in by_name["bias"]["params"])[-1] == 10  # the classifier's bias, as fc.bias
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert all(p.dim() == 4 or p.shape == (10, 64) for p in by_name["others"]["params"])  # convs, fc.weight
    assert recipe.groups_rule("auto", None) == "single" and recipe.groups_rule("single", "fixup") == "single"
    with pytest.raises(ValueError, match="param_groups='two' is unknown"):
        recipe.groups_rule("two", "fixup")


def test_fixup_runs_biases_and_scales_at_a_tenth_through_the_schedule(tmp_path, data_root):
    """The official adjust_learning_rate keeps every group's lr at its initial lr ÷ 10 / ÷ 100 after epochs
    100 / 150: the ratio stays 1/10; weight decay and momentum are the same on every group."""
    config = tiny(data_root, norm="none", branch_init="fixup", steps=4, log_every=1, eval_every=4,
                  checkpoint_every=4, record_every=4, lr=0.02, record_metrics=("branch_scale",))
    folder = train(config, out=tmp_path).folder
    groups = torch.load(folder / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    last = 0.02 * 0.1 ** 2  # milestones at 50 % and 75 % of 4 steps: both passed at the last step
    want = [("bias", pytest.approx(last / 10)), ("scale", pytest.approx(last / 10)), ("others", pytest.approx(last))]
    assert [(g["name"], g["lr"]) for g in groups] == want
    assert {(g["weight_decay"], g["momentum"]) for g in groups} == {(1e-4, 0.9)}


def test_fixup_stem_keeps_pytorchs_default_init():
    """The official FixupResNet never re-initialises conv1: PyTorch's default, U(±1/√27) for a 3→16 3×3 conv
    (std 0.111), where resviz's other nets use He normal (std √(2/27) = 0.272)."""
    bound = 1 / math.sqrt(27)
    torch.manual_seed(0)
    fixup = cifar_resnet(20, norm="none", branch_init="fixup").conv1.weight.detach()
    he = cifar_resnet(20, norm="none").conv1.weight.detach()
    assert fixup.abs().max() <= bound and float(fixup.std()) == pytest.approx(bound / math.sqrt(3), rel=0.12)
    assert float(he.std()) == pytest.approx(math.sqrt(2 / 27), rel=0.12) and he.abs().max() > bound


def test_mixup_equals_the_official_criterion():
    """Official: λ x + (1 − λ) x[index] and λ CE(y_a) + (1 − λ) CE(y_b), written as
    (−log_softmax · λ onehot).sum(1).mean() per target; resviz's soft-target cross-entropy is that number, and its
    error count is the trainer's."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    mixed, target = recipe.mixup_batch(x, y, 1.0, 10, seed=3, step=7)
    onehot = F.one_hot(y, 10).float()
    two = next(i for i in range(16) if int(target[i].ne(0).sum()) == 2)  # a row mixing two labels gives λ
    lam = float(target[two, y[two]])
    assert 0 < lam < 1
    logits = torch.randn(16, 10, generator=g)
    partner = [next(j for j in range(16) if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5))
               for i in range(16)]
    y_b = y[partner]
    official = lambda pred, t, w: (-F.log_softmax(pred, 1) * F.one_hot(t, 10).float() * w).sum(1).mean()  # noqa: E731
    want = official(logits, y, lam) + official(logits, y_b, 1 - lam)
    assert F.cross_entropy(logits, target).item() == pytest.approx(want.item(), rel=1e-6)
    pred = logits.argmax(1)
    counted = lam * (pred == y).float().sum() + (1 - lam) * (pred == y_b).float().sum()
    assert recipe.soft_wrong(logits, target).item() == pytest.approx(16 - counted.item(), rel=1e-6)
    assert sorted(partner) == list(range(16))  # a pairing: a permutation of the batch
    again = recipe.mixup_batch(x, y, 1.0, 10, seed=3, step=7)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], target)  # a function of (seed, step)
    plain = recipe.mixup_batch(x, y, 0.0, 10, seed=3, step=7)
    assert plain[0] is x and torch.equal(plain[1], onehot)


def test_mixup_run_trains_and_is_named(tmp_path, data_root):
    config = tiny(data_root, norm="none", branch_init="fixup", mixup_alpha=1.0, steps=2, log_every=1,
                  eval_every=2, checkpoint_every=2, record_every=2, lr=0.02, record_metrics=("branch_scale",))
    assert config.run_id == "digits-resnet8-none-scA-fixup-w8-mixup1-s0"
    result = train(config, out=tmp_path)
    metrics = pd.read_parquet(result.folder / "metrics.parquet")
    assert result.status == "done" and metrics["loss"].notna().all() and (metrics["train_error"] <= 1).all()
    with pytest.raises(ValueError, match="--mixup-alpha=-1.0 must be zero"):
        tiny(data_root, mixup_alpha=-1.0).validate()


def test_runs_from_before_the_recipe_keys_resume_unless_they_are_fixup(tmp_path, data_root):
    """A config.json without param_groups / mixup_alpha (written before them) trained with one group and no mixup:
    a plain or BN run resumes under the new defaults; a Fixup run, which "auto" now gives three groups, is refused
    by name."""
    import json

    for branch_init, norm in ((None, "batch"), ("fixup", "none")):
        config = tiny(data_root, norm=norm, branch_init=branch_init, steps=4, log_every=2, eval_every=4,
                      checkpoint_every=2, record_every=4, lr=0.02, param_groups="single",
                      record_metrics=("grad_norm",))
        folder = train(dataclasses.replace(config, steps=2), out=tmp_path).folder
        saved = json.loads((folder / "config.json").read_text())
        for key in ("param_groups", "mixup_alpha"):
            saved.pop(key)
        saved["steps"] = 4
        (folder / "config.json").write_text(json.dumps(saved))
        resumed = dataclasses.replace(config, param_groups="auto")
        if branch_init is None:
            assert train(resumed, out=tmp_path).status == "done"
            continue
        with pytest.raises(ValueError, match=r"different config \(param_groups: 'single' -> 'auto'\)"):
            train(resumed, out=tmp_path)
