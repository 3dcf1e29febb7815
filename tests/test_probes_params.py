"""Recorder statistics that could mislead: option-A skip channels, parameter kinds, relative gradient norms.

Each value is checked against a computation written here with plain torch hooks and tensors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import values
from torch import nn

from resviz import schema
from resviz.models import cifar_resnet
from resviz.probes import Recorder
from resviz.probes.plan import moment_rows


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny nets on one thread


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def captured(model, suffixes):
    """Forward-hook copies of the outputs of modules whose names end with `suffixes`, and their handles."""
    seen = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out.detach().double().clone()))
               for n, m in model.named_modules() if n.endswith(suffixes)]
    return seen, handles


def record(model, x, y, **kw):
    seen, handles = captured(model, ("probe_branch", "probe_skip"))
    try:
        with Recorder(model, every=1, **kw) as rec:
            F.cross_entropy(model(x), y).backward()
            rec.end_step(0)
    finally:
        for h in handles:
            h.remove()
    return rec.frame(), seen


def test_option_a_skip_std_and_branch_ratio_leave_the_zero_padded_channels_out():
    torch.manual_seed(0)
    model = cifar_resnet(8)  # width 16: layer2.0 pads 32 // 4 = 8 channels per side, layer3.0 16 per side
    x, y = batch()
    df, seen = record(model, x, y, metrics=["skip_std", "branch_ratio"])
    skip, ratio = values(df, "skip_std"), values(df, "branch_ratio")
    for block, (lo, hi) in {"layer2.0": (8, 24), "layer3.0": (16, 48)}.items():
        s, b = seen[f"{block}.probe_skip"], seen[f"{block}.probe_branch"]
        assert not s[:, :lo].any() and not s[:, hi:].any() and s[:, lo:hi].abs().amax((0, 2, 3)).min() > 0
        assert skip[f"{block}.probe_skip"] == pytest.approx(s[:, lo:hi].std().item(), rel=2e-5)
        assert abs(skip[f"{block}.probe_skip"] / s.std().item() - 1) > 0.05  # pooled over the zeros is another number
        assert ratio[block] == pytest.approx((b[:, lo:hi].norm() / s[:, lo:hi].norm()).item(), rel=2e-5)
    identity = seen["layer1.0.probe_skip"]  # an identity skip: all channels
    assert skip["layer1.0.probe_skip"] == pytest.approx(identity.std().item(), rel=2e-5)


def test_option_b_skip_keeps_every_channel_and_channel_moments_stay_over_all_channels():
    torch.manual_seed(0)
    model = cifar_resnet(8, shortcut="B")
    x, y = batch()
    df, seen = record(model, x, y, metrics=["skip_std", "branch_ratio"])
    s, b = seen["layer2.0.probe_skip"], seen["layer2.0.probe_branch"]
    assert values(df, "skip_std")["layer2.0.probe_skip"] == pytest.approx(s.std().item(), rel=2e-5)
    assert values(df, "branch_ratio")["layer2.0"] == pytest.approx((b.norm() / s.norm()).item(), rel=2e-5)
    # channel moments at an option-A skip (signal propagation) are over all its channels, padding included
    torch.manual_seed(0)
    model = cifar_resnet(8)
    df, seen = record(model, x, y, metrics=["channel_var"], block_rows=moment_rows(("skip",)))
    s = seen["layer2.0.probe_skip"]
    want = s.transpose(0, 1).reshape(s.shape[1], -1).var(1, unbiased=False).mean().item()
    assert values(df, "channel_var")["layer2.0.probe_skip"] == pytest.approx(want, rel=1e-4)


class Mixed(nn.Module):
    """Every kind of parameter: an embedding, linear weight and bias, a LayerNorm's scale and shift, a scalar."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.norm = nn.LayerNorm(6)
        self.proj = nn.Linear(6, 5)
        self.conv = nn.Conv1d(6, 6, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, tokens):  # (B, T) -> (B, 5)
        h = self.norm(self.embed(tokens)) * self.scale  # (B, T, 6)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.proj(h.mean(1))


def kind_by_hand(model: nn.Module, name: str) -> str:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
        return {"weight": "norm_scale", "bias": "norm_shift"}[leaf]
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        return leaf
    return "other"


@pytest.mark.parametrize("which", ["resnet", "fixup", "mixed"])
def test_param_kind_tags_every_parameter_row(which):
    torch.manual_seed(0)
    if which == "mixed":
        model, x, y = Mixed(), torch.randint(0, 11, (4, 3)), torch.randint(0, 5, (4,))
        metrics = ["grad_norm", "grad_rel_norm"]
    else:
        kw = dict(branch_init="fixup", norm="none") if which == "fixup" else {}
        model, (x, y) = cifar_resnet(8, **kw), batch()
        metrics = ["grad_norm", "grad_rel_norm", "branch_scale", "response_std"]
    with Recorder(model, every=1, metrics=metrics) as rec:
        F.cross_entropy(model(x), y).backward()
        rec.end_step(0)
    df = rec.frame()
    schema.validate(df)
    params = df[df["metric"] == "grad_norm"]
    assert list(params["layer"].astype(str)) == [n for n, _ in model.named_parameters()]
    for name, kind in zip(params["layer"].astype(str), params["param_kind"].astype(str)):
        assert kind == kind_by_hand(model, name), name
    others = df[~df["metric"].isin(schema.metrics_at("param"))]
    assert set(others["param_kind"].astype(str)) <= {""}
    if which == "fixup":
        assert set(df.loc[df["metric"] == "branch_scale", "param_kind"].astype(str)) == {"other"}


@pytest.mark.parametrize("with_grad_norm", [True, False])
def test_grad_rel_norm_is_the_gradient_norm_over_the_weight_norm_per_weight_tensor(with_grad_norm):
    torch.manual_seed(0)
    model = cifar_resnet(8)
    model.layer1[0].conv2.weight.requires_grad_(False)  # no gradient: no row
    x, y = batch()
    metrics = ["grad_norm", "grad_rel_norm"] if with_grad_norm else ["grad_rel_norm"]
    with Recorder(model, every=1, metrics=metrics) as rec:
        F.cross_entropy(model(x), y).backward()
        want = {n: (p.grad.double().norm() / p.detach().double().norm()).item()
                for n, p in model.named_parameters() if p.grad is not None and p.dim() >= 2}
        rec.end_step(0)
    df = rec.frame()
    got = values(df, "grad_rel_norm")
    assert list(got) == list(want)  # conv and linear weights only, in parameter order
    assert "layer1.0.conv2.weight" not in got and "bn1.weight" not in got and "linear.bias" not in got
    for name, v in got.items():
        assert v == pytest.approx(want[name], rel=1e-5), name
    rows = df[df["metric"] == "grad_rel_norm"]
    assert set(rows["param_kind"].astype(str)) == {"weight"}
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}  # layer_index as grad_norm's
    assert rows["layer_index"].tolist() == [index[n] for n in rows["layer"].astype(str)]
    m = schema.METRIC_TABLE["grad_rel_norm"]
    assert (m.level, m.log_scale) == ("param", True)
