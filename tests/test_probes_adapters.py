"""Recorder on models that are not resviz's: torchvision ResNets, a block marked with Probe, unknown blocks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import all_hooks_empty, channel_sq_mean, channel_var, norm, std, values
from torch import nn

from resviz.models import Probe, cifar_resnet
from resviz.probes import Recorder


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny nets on one thread


def torchvision_by_hand(model, x):
    """torchvision's ResNet run block by block with out-of-place ops; tensors keyed by the table's names."""
    t = {}
    h = model.bn1(model.conv1(x))
    t["bn1"] = h
    h = model.maxpool(F.relu(h))
    for stage in (1, 2, 3, 4):
        for i, b in enumerate(getattr(model, f"layer{stage}")):
            name = f"layer{stage}.{i}"
            o = b.bn1(b.conv1(h))
            t[f"{name}.bn1"] = o
            o = b.bn2(b.conv2(F.relu(o)))
            t[f"{name}.bn2"] = o
            if isinstance(b, torchvision.models.resnet.Bottleneck):
                o = b.bn3(b.conv3(F.relu(o)))
                t[f"{name}.bn3"] = o
            t[f"{name}.probe_branch"] = o
            skip = h if b.downsample is None else b.downsample(h)
            t[f"{name}.probe_skip"] = skip
            t[f"{name}.probe_sum"] = o + skip
            h = F.relu(o + skip)
            t[f"{name}.probe_out"] = h
    return t, model.fc(torch.flatten(model.avgpool(h), 1))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnet_without_changes(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    ref, logits = torchvision_by_hand(model, x)  # with autograd, for the activation gradients
    outs = {n: t for n, t in ref.items() if n.endswith("probe_out")}
    want_act = dict(zip(outs, torch.autograd.grad(F.cross_entropy(logits, y), list(outs.values()))))
    model.zero_grad()
    with Recorder(model, every=1) as rec:
        F.cross_entropy(model(x), y).backward()  # torchvision's own forward: in-place ReLU and `out += identity`
        rec.end_step(0)
    assert all_hooks_empty(model) == []
    df = rec.frame()
    assert set(df["arch"]) == {"ResNet"} and set(df["depth"]) == {-1}
    tol = dict(rel=2e-5, abs=1e-6)
    got = values(df, "response_std")
    norms = [n for n in ref if n.rpartition(".")[2] in ("bn1", "bn2", "bn3")]
    assert list(got) == norms  # downsample.1 (a 1x1 projection's BN) is left out
    for n in norms:
        assert got[n] == pytest.approx(std(ref[n]), **tol), n
    blocks = [n.removesuffix(".probe_out") for n in outs]
    assert len(blocks) == (8 if arch == "resnet18" else 16)
    for metric, point, fn in [
        ("branch_std", "probe_branch", std),
        ("skip_std", "probe_skip", std),
        ("sum_std", "probe_sum", std),
        ("channel_sq_mean", "probe_out", channel_sq_mean),
    ]:
        got = values(df, metric)
        assert list(got) == [f"{b}.{point}" for b in blocks], metric
        for layer, v in got.items():
            assert v == pytest.approx(fn(ref[layer]), **tol), (metric, layer)
    for layer, v in values(df, "channel_var").items():
        assert v == pytest.approx(channel_var(ref[layer]), **tol), layer
    for b, v in values(df, "branch_ratio").items():
        assert v == pytest.approx(norm(ref[f"{b}.probe_branch"]) / norm(ref[f"{b}.probe_skip"]), rel=2e-5)
    for layer, v in values(df, "act_grad_norm").items():
        assert v == pytest.approx(want_act[layer].norm().item(), rel=1e-4), layer
    for name, p in model.named_parameters():
        assert values(df, "grad_norm")[name] == pytest.approx(p.grad.norm().item(), rel=1e-5)
    rows = df[df["metric"] == "grad_norm"]
    stages = dict(zip(rows["layer"].astype(str), rows["stage"]))
    assert (stages["conv1.weight"], stages["layer4.1.conv2.weight"], stages["fc.weight"]) == (0, 4, 5)


class MarkedBlock(nn.Module):
    """A user's block that is not a resviz BasicBlock, marked for the Recorder with Probe children."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c)
        self.probe_branch, self.probe_skip, self.probe_sum, self.probe_out = Probe(), Probe(), Probe(), Probe()

    def forward(self, x):
        return self.probe_out(F.gelu(self.probe_sum(self.probe_branch(self.norm(self.conv(x))) + self.probe_skip(x))))


class Net(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(block(8), block(8))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_block_marked_with_probes_is_recorded():
    torch.manual_seed(0)
    model = Net(MarkedBlock)
    x = torch.randn(4, 3, 16, 16)
    with Recorder(model, every=1, run_info={"run_id": "mine"}) as rec:
        model(x).sum().backward()
        rec.step()
    df = rec.frame()
    with torch.no_grad():
        h = model.stem(x)
        for i, b in enumerate(model.blocks):
            branch = b.norm(b.conv(h))
            name = f"blocks.{i}"
            assert values(df, "response_std")[f"{name}.norm"] == pytest.approx(std(branch), rel=2e-5)
            assert values(df, "branch_std")[f"{name}.probe_branch"] == pytest.approx(std(branch), rel=2e-5)
            assert values(df, "skip_std")[f"{name}.probe_skip"] == pytest.approx(std(h), rel=2e-5)
            assert values(df, "sum_std")[f"{name}.probe_sum"] == pytest.approx(std(branch + h), rel=2e-5)
            h = F.gelu(branch + h)
            assert values(df, "channel_var")[f"{name}.probe_out"] == pytest.approx(channel_var(h), rel=2e-5)
    assert set(df["run_id"]) == {"mine"} and set(df["stage"]) == {-1}


def test_wrapped_models_are_unwrapped():
    model = cifar_resnet(8)
    with Recorder(nn.DataParallel(model), every=1, metrics=["response_std", "grad_norm"]) as rec:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        rec.step()
    layers = set(rec.frame()["layer"])
    assert "layer1.0.bn1" in layers and "linear.weight" in layers
    assert set(rec.frame()["arch"]) == {"resnet"}
