"""timm models go into the Recorder as `timm.create_model(...)` returns them: ResNet (plain, SE, "-d", drop-path),
ResNetV2 pre-activation, ConvNeXt and ViT. Each check is against tensors caught with plain hooks written here and
branch + skip added by hand, never through the Recorder's own block specs."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import all_hooks_empty, assert_adds_match, channel_var, values

from resviz.probes import Recorder

timm = pytest.importorskip("timm")

MODELS = {  # name -> (create_model kwargs, input side)
    "resnet18": ({}, 32),
    "seresnet18": ({}, 32),  # squeeze-excitation in `se`: the branch ends there
    "resnet18d": ({"drop_path_rate": 0.1}, 32),  # avg-pool "-d" downsampling, DropPath modules
    "resnetv2_18": ({}, 32),  # pre-activation: `return drop_path(conv) + shortcut`, no activation after
    "convnext_atto": ({"ls_init_value": 0.5}, 32),  # layer scale applied functionally (x.mul(gamma))
    "vit_tiny_patch16_224": ({"img_size": 32, "depth": 3}, 32),  # two adds per Block, (B, T, C) tokens
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny nets on one thread


def create(name: str):
    kwargs, side = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs)
    x = torch.randn(2, 3, side, side)
    return model, x


def _capture(model, blocks):
    """Plain hooks: each block's input and output and the outputs of its children, cloned at once (timm adds
    and activates in place)."""
    seen, handles = {}, []

    def keep(key):
        def hook(module, args, output):
            seen[key] = output.detach().double().clone()
        return hook

    for name, block in blocks:
        handles.append(block.register_forward_pre_hook(
            lambda m, a, name=name: seen.__setitem__((name, ":in"), a[0].detach().double().clone())))
        handles.append(block.register_forward_hook(keep((name, ""))))
        for child, module in block.named_modules():
            if child:
                handles.append(module.register_forward_hook(keep((name, child))))
    return seen, handles


def adds_by_hand(name: str, model, x):
    """{layer prefix: (branch, skip, sum)} of every residual add, from plain hooks and sums done here."""
    kind = type(model).__name__
    if kind == "VisionTransformer":
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    elif kind == "ResNet":
        blocks = [(f"layer{s}.{i}", b) for s in range(1, 5) for i, b in enumerate(getattr(model, f"layer{s}"))]
    else:  # ConvNeXt, ResNetV2: stages.S.blocks.i
        blocks = [(f"stages.{s}.blocks.{i}", b) for s, st in enumerate(model.stages) for i, b in enumerate(st.blocks)]
    seen, handles = _capture(model, blocks)
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    adds = {}
    for bname, block in blocks:
        t = {k[1]: v for k, v in seen.items() if k[0] == bname}
        if kind == "VisionTransformer":
            branch1, branch2 = t["ls1"], t["ls2"]  # drop_path is the identity in eval mode
            skip2 = t[":in"] + branch1
            adds[f"{bname}.attn"] = (branch1, t[":in"], skip2)
            adds[f"{bname}.mlp"] = (branch2, skip2, skip2 + branch2)
        else:
            if kind == "ResNet":
                branch = t["se"] if block.se is not None else t["bn2"]
            elif kind == "ConvNeXt":
                mlp = t["mlp"] if block.use_conv_mlp else t["mlp"].permute(0, 3, 1, 2)  # (N, C, H, W)
                branch = mlp * block.gamma.detach().double().reshape(1, -1, 1, 1)
            else:
                branch = t["conv2"]  # PreActBasic: conv2(norm2(conv1(...)))
            skip = t["downsample"] if getattr(block, "downsample", None) is not None else t[":in"]
            if kind == "ConvNeXt":
                skip = t["shortcut"]
            adds[bname] = (branch, skip, branch + skip)
        out = adds[list(adds)[-1]][2]
        after = torch.relu(out) if kind == "ResNet" else out
        assert torch.allclose(after, t[""], atol=1e-5), bname  # the adds written here are the block's
    return adds


@pytest.mark.parametrize("name", list(MODELS))
def test_timm_model_recorded_as_is(name):
    model, x = create(name)
    model.eval()  # drop-path off: the by-hand pass and the recorded pass see the same branch
    want = adds_by_hand(name, model, x)
    with Recorder(model, every=1) as rec:
        model(x).logsumexp(1).sum().backward()
        rec.end_step(0)
    assert all_hooks_empty(model) == []
    df = rec.frame()
    assert set(df["model"]) == {name} and set(df["family"]) <= {"timm resnet", "timm resnetv2", "timm convnext",
                                                                  "timm vision_transformer"}
    assert_adds_match(df, want)
    for a, (branch, skip, _) in want.items():
        assert values(df, "channel_var")[f"{a}.probe_branch"] == pytest.approx(
            channel_var(branch if branch.dim() == 4 else branch.permute(0, 2, 1)[..., None]), rel=1e-4)
    rows = df[df["metric"] == "branch_std"]
    assert list(rows["layer_index"]) == list(range(len(want)))  # the add's position along the network


@pytest.mark.parametrize("name", ["resnet18d", "vit_tiny_patch16_224"])
def test_recording_leaves_outputs_and_gradients_bit_identical(name):
    model, x = create(name)
    twin = copy.deepcopy(model)
    model.train(), twin.train()
    torch.manual_seed(1)
    twin(x).square().mean().backward()
    torch.manual_seed(1)  # drop-path draws the same masks
    with Recorder(model, every=1) as rec:
        out = model(x)
        out.square().mean().backward()
        rec.end_step(0)
    torch.manual_seed(1)
    assert torch.equal(twin(x), model(x))
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad), n


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "vit_tiny_patch16_224"])
def test_zeroed_branches_give_zero_branch_std(name):
    """Zero each branch's last layer: branch_std 0, and sum_std equals skip_std at every add."""
    model, x = create(name)
    with torch.no_grad():
        for m in model.modules():
            last = {"BasicBlock": "bn2", "ConvNeXtBlock": "mlp.fc2", "Block": None}.get(type(m).__name__, "")
            if last:
                target = m.get_submodule(last)
                target.weight.zero_(), target.bias.zero_()
            elif last is None:
                for path in ("attn.proj", "mlp.fc2"):
                    m.get_submodule(path).weight.zero_(), m.get_submodule(path).bias.zero_()
    with Recorder(model, every=1, metrics=["branch_std", "skip_std", "sum_std"]) as rec:
        model(x)
        rec.end_step(0)
    df = rec.frame()
    branch, skip, total = (values(df, m) for m in ("branch_std", "skip_std", "sum_std"))
    assert len(branch) >= 6 and set(branch.values()) == {0.0}
    for layer, v in skip.items():
        assert total[layer.replace("probe_skip", "probe_sum")] == pytest.approx(v, rel=1e-6), layer


def test_no_hook_survives_an_exception():
    model, x = create("vit_tiny_patch16_224")
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(model, every=1):
            model(x)
            raise RuntimeError("boom")
    assert all_hooks_empty(model) == []


@pytest.mark.slow
def test_compiled_timm_resnet_records_the_same_numbers():
    model, x = create("resnet18")
    twin = copy.deepcopy(model)
    frames = []
    for m, call in ((model, model), (twin, torch.compile(twin, backend="aot_eager"))):
        with Recorder(m, every=1, metrics=["branch_std", "sum_std", "response_std"]) as rec:
            call(x).sum().backward()
            rec.end_step(0)
        frames.append(rec.frame())
    torch._dynamo.reset()
    eager, compiled = (f.set_index(["metric", "layer"])["value"] for f in frames)
    assert len(eager) == len(compiled) > 20
    assert compiled.loc[eager.index].to_numpy() == pytest.approx(eager.to_numpy(), rel=1e-4)
