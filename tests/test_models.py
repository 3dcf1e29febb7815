"""The CIFAR family: shapes, gradients, exact parameter counts, probe points, option A/B, norms, inits."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resviz.models import (
    NoNorm,
    Probe,
    ShortcutA,
    check_depth,
    cifar_resnet,
    count_parameters,
    forward_macs,
    iter_blocks,
)

# akamaster's README / He et al. Table 6 (0.27M ... 19.4M), option A, 10 classes
PARAM_COUNTS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


@pytest.mark.parametrize("depth,expected", sorted(PARAM_COUNTS.items()))
def test_parameter_counts_are_exact(depth, expected):
    assert count_parameters(cifar_resnet(depth)) == expected
    assert count_parameters(cifar_resnet(depth, plain=True)) == expected  # option A adds no parameters


def test_option_b_adds_two_projections():
    a, b = cifar_resnet(20), cifar_resnet(20, shortcut="B")
    # two projections: 16->32 and 32->64 1x1 convs, each followed by a BN (weight + bias)
    assert count_parameters(b) - count_parameters(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize(
    "plain,shortcut,norm",
    [(p, s, n) for p, s, n in itertools.product([False, True], ["A", "B"], ["batch", "layer", "group", "none"])
     if not (p and s == "B")],
)
def test_forward_backward_every_variant(plain, shortcut, norm):
    torch.manual_seed(0)
    model = cifar_resnet(8, plain=plain, shortcut=shortcut, norm=norm)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.arange(4)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("branch_init,norm", [("skipinit", "batch"), ("rezero", "none"), ("fixup", "none")])
def test_branch_inits_train(branch_init, norm):
    torch.manual_seed(0)
    model = cifar_resnet(8, branch_init=branch_init, norm=norm)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    F.cross_entropy(out, torch.arange(4)).backward()
    scales = [b.branch_scale for *_, b in iter_blocks(model)]
    assert len(scales) == 3
    # with a zero branch (SkipInit/ReZero) or a zero last conv (Fixup) the scale still gets a gradient path
    assert all(s.grad is not None for s in scales)


def test_skipinit_and_rezero_start_as_identity():
    torch.manual_seed(0)
    for branch_init in ("skipinit", "rezero"):
        model = cifar_resnet(8, branch_init=branch_init).eval()
        block = model.layer1[0]
        x = torch.randn(2, 16, 32, 32)
        expected = F.relu(x) if branch_init == "skipinit" else x
        assert torch.equal(block(x), expected)


@pytest.mark.parametrize("depth", [20, 110])
def test_fixup_init_follows_the_papers_rules(depth):
    """Zhang et al. 2019 at init: first branch conv He (fan-out) x L^(-1/(2m-2)), last branch conv and classifier
    zero, scalar biases zero, branch multipliers one; the net's output is exactly zero."""
    torch.manual_seed(0)
    model = cifar_resnet(depth, branch_init="fixup", norm="none")
    num_branches = 3 * check_depth(depth)  # L
    scale = num_branches ** (-1 / (2 * 2 - 2))  # m = 2 layers per basic block
    for stage, planes in ((1, 16), (2, 32), (3, 64)):
        w = torch.cat([b.conv1.weight.flatten() for s, _, _, b in iter_blocks(model) if s == stage])
        assert w.mean().item() == pytest.approx(0.0, abs=0.1 * w.std().item())
        assert w.std().item() == pytest.approx((2 / (planes * 9)) ** 0.5 * scale, rel=0.05), stage
    blocks = [b for *_, b in iter_blocks(model)]
    assert all(torch.count_nonzero(b.conv2.weight) == 0 for b in blocks)
    assert torch.count_nonzero(model.linear.weight) == 0 and torch.count_nonzero(model.linear.bias) == 0
    biases = [model.fixup_bias1, model.fixup_bias2] + [getattr(b, f"fixup_bias{k}") for b in blocks
                                                       for k in ("1a", "1b", "2a", "2b")]
    assert len(biases) == 2 + 4 * num_branches and all(p.shape == () and p.item() == 0.0 for p in biases)
    assert all(b.branch_scale.shape == () and b.branch_scale.item() == 1.0 for b in blocks)
    stem = model.conv1.weight  # outside the branches: PyTorch's default init, as the official code (never re-set)
    assert stem.std().item() == pytest.approx(1 / 81 ** 0.5, rel=0.15) and stem.abs().max() <= 1 / 27 ** 0.5
    assert torch.equal(model(torch.randn(2, 3, 32, 32)), torch.zeros(2, 10))


def _fixup_reference(model, x):
    """Fixup's forward written out from the paper / official CIFAR code, reading the model's parameters:
    biases before each conv, activation and the classifier; branch * scale + bias; option A skip of x + bias1a."""
    out = F.relu(F.conv2d(x, model.conv1.weight, padding=1) + model.fixup_bias1)
    for *_, b in iter_blocks(model):
        stride = b.conv1.stride
        h = F.relu(F.conv2d(out + b.fixup_bias1a, b.conv1.weight, stride=stride, padding=1) + b.fixup_bias1b)
        h = F.conv2d(h + b.fixup_bias2a, b.conv2.weight, padding=1) * b.branch_scale + b.fixup_bias2b
        if b.downsamples:
            pad = b.conv1.out_channels // 4
            skip = F.pad((out + b.fixup_bias1a)[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
        else:
            skip = out
        out = F.relu(h + skip)
    return F.linear(out.mean((2, 3)) + model.fixup_bias2, model.linear.weight, model.linear.bias)


def test_fixup_forward_places_every_bias_and_scale_as_published():
    torch.manual_seed(0)
    model = cifar_resnet(14, branch_init="fixup", norm="none", width=8)
    with torch.no_grad():  # move every parameter off its init so each bias and scale matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model(x), _fixup_reference(model, x), rtol=1e-5, atol=1e-6)
    names = {n for n, _ in model.named_parameters()}
    assert {"fixup_bias1", "fixup_bias2", "layer2.0.fixup_bias1a", "layer3.1.branch_scale"} <= names
    assert not any("fixup" in n for n, _ in cifar_resnet(14).named_parameters())  # default nets: akamaster's


def test_probe_points_see_branch_skip_and_sum():
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.clone()))
        for name, m in model.named_modules()
        if isinstance(m, Probe)
    ]
    try:
        model(torch.randn(2, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    for stage in (1, 2, 3):
        p = f"layer{stage}.0."
        assert torch.equal(seen[p + "probe_sum"], seen[p + "probe_branch"] + seen[p + "probe_skip"])
        assert torch.equal(seen[p + "probe_out"], F.relu(seen[p + "probe_sum"]))


def test_plain_net_has_no_skip_probe():
    model = cifar_resnet(8, plain=True)
    names = [n for n, _ in model.named_modules()]
    assert not any(n.endswith("probe_skip") or n.endswith("shortcut") for n in names)
    assert "layer2.0.probe_branch" in names


def test_option_a_matches_akamaster_lambda():
    x = torch.randn(2, 16, 32, 32)
    ref = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 32 // 4, 32 // 4), "constant", 0)
    assert torch.equal(ShortcutA(32)(x), ref)


def test_norm_slots_exist_for_every_norm():
    kinds = {"batch": nn.BatchNorm2d, "layer": nn.GroupNorm, "group": nn.GroupNorm, "none": NoNorm}
    for norm, cls in kinds.items():
        model = cifar_resnet(8, norm=norm)
        assert isinstance(model.bn1, cls) and isinstance(model.layer3[0].bn2, cls)
    assert model.layer1[0].bn1.__class__ is NoNorm
    assert cifar_resnet(8, norm="layer").bn1.num_groups == 1


def test_akamaster_layer_names():
    keys = set(cifar_resnet(20).state_dict())
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer3.2.bn2.bias", "linear.weight"]:
        assert k in keys


def test_forward_macs_formula_matches_layer_shapes():
    model = cifar_resnet(20)
    macs = 0

    def count(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        elif isinstance(mod, nn.Linear):
            macs += mod.in_features * mod.out_features

    hs = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model(torch.zeros(1, 3, 32, 32))
    for h in hs:
        h.remove()
    assert macs == forward_macs(20)


@pytest.mark.parametrize("depth", [0, 7, 9, 21, -4, 20.0, True])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match=r"must be 6n\+2 .* e\.g\. 8, 14, 20, 32, 44, 56, 110 or 1202"):
        cifar_resnet(depth)


def test_check_depth_gives_n():
    assert check_depth(56) == 9 and check_depth(1202) == 200


def test_bad_norm_shortcut_and_init():
    with pytest.raises(ValueError, match=r"norm='instance' is unknown; use one of batch, layer, group, none"):
        cifar_resnet(8, norm="instance")
    with pytest.raises(ValueError, match=r"shortcut='C' is unknown; use 'A'"):
        cifar_resnet(8, shortcut="C")
    with pytest.raises(ValueError, match=r"branch_init='zero' is unknown"):
        cifar_resnet(8, branch_init="zero")
    with pytest.raises(ValueError, match=r"Fixup replaces normalisation"):
        cifar_resnet(8, branch_init="fixup", norm="batch")
    with pytest.raises(ValueError, match=r"a plain net has no skip path"):
        cifar_resnet(8, plain=True, branch_init="rezero")
