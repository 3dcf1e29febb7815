"""resviz.register_block: a user's block recorded without editing it; docs/blocks.md's worked example runs; an
unknown block is refused with the exact register_block call for its class, and that call works."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import all_hooks_empty, norm, std, values
from torch import nn

import resviz
from resviz.probes import Recorder, unregister_block

DOCS = Path(__file__).resolve().parents[1] / "docs" / "blocks.md"


class UnmarkedResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.norm(self.conv(x)))


class TwoAddTokens(nn.Module):
    """A pre-norm token layer with two additions, called with its input by keyword."""

    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mix, self.mlp = nn.Linear(d, d), nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, hidden_states):
        h = hidden_states + self.mix(self.norm1(hidden_states))
        return h + self.mlp(self.norm2(h))


class Net(nn.Module):
    def __init__(self, block, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(block(c), block(c))
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.fixture(autouse=True)
def clean_registry():
    yield
    for cls in (UnmarkedResidualBlock, TwoAddTokens):
        unregister_block(cls)


def test_unknown_block_message_shows_the_call_and_the_call_works():
    torch.manual_seed(0)
    model = Net(UnmarkedResidualBlock)
    with pytest.raises(ValueError, match=r"block type .*UnmarkedResidualBlock \(at 'blocks\.0'\)") as err:
        Recorder(model)
    call = re.search(r"`(resviz\.register_block\(.*?\))`", str(err.value)).group(1)
    assert call.endswith("UnmarkedResidualBlock, branch='norm', skip=':in')")
    eval(call, {"resviz": resviz, __name__: __import__(__name__)})  # the message's call, as a user pastes it
    x = torch.randn(4, 3, 8, 8)
    with Recorder(model, every=1) as rec:
        model(x).sum().backward()
        rec.step()
    df = rec.frame()
    with torch.no_grad():
        h = model.stem(x)
        for i, b in enumerate(model.blocks):
            branch = b.norm(b.conv(h))
            assert values(df, "branch_std")[f"blocks.{i}.probe_branch"] == pytest.approx(std(branch), rel=1e-5)
            assert values(df, "skip_std")[f"blocks.{i}.probe_skip"] == pytest.approx(std(h), rel=1e-5)
            assert values(df, "branch_ratio")[f"blocks.{i}"] == pytest.approx(norm(branch) / norm(h), rel=1e-5)
            h = F.relu(branch + h)
    assert "sum_std" not in set(df["metric"])  # no sum point given: no sum row
    assert set(df["family"]) == {"test_register_block"}


def test_the_worked_example_in_the_docs_runs():
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    namespace: dict = {"__name__": "blocks_doc"}
    try:
        exec(compile(code, str(DOCS), "exec"), namespace)
        df, model = namespace["df"], namespace["model"]
        assert all_hooks_empty(model) == []
        ratio = values(df, "branch_ratio")
        assert list(ratio) == ["1", "2"] and all(0 < v < 10 for v in ratio.values())
        # block 1 projects 8 -> 16 channels: the skip is proj's output; block 2's is its input
        x = namespace["x"]
        with torch.no_grad():
            h = model[0](x)
            b1 = model[1]
            branch = b1.norm(b1.conv(h))
            assert values(df, "skip_std")["1.probe_skip"] == pytest.approx(std(b1.proj(h)), rel=1e-5)
            assert values(df, "sum_std")["1.probe_sum"] == pytest.approx(std(branch + b1.proj(h)), rel=1e-5)
    finally:
        unregister_block(namespace["GatedBlock"])


def test_two_additions_on_tokens_called_by_keyword():
    resviz.register_block(
        TwoAddTokens,
        adds={"attn": dict(branch="mix", skip=":in", sum="norm2:in"), "mlp": dict(branch="mlp", skip="norm2:in")},
        tokens=True,
        channels="norm1",
    )
    torch.manual_seed(0)
    model = nn.ModuleList([TwoAddTokens(6), TwoAddTokens(6)])
    x = torch.randn(3, 5, 6)
    with Recorder(model, every=1, metrics=["branch_std", "skip_std", "sum_std", "response_std"]) as rec:
        h = x
        for layer in model:
            h = layer(hidden_states=h)
        rec.step()
    df = rec.frame()
    with torch.no_grad():
        h = x
        for i, layer in enumerate(model):
            a = layer.mix(layer.norm1(h))
            assert values(df, "branch_std")[f"{i}.attn.probe_branch"] == pytest.approx(std(a), rel=1e-5)
            assert values(df, "skip_std")[f"{i}.attn.probe_skip"] == pytest.approx(std(h), rel=1e-5)
            assert values(df, "sum_std")[f"{i}.attn.probe_sum"] == pytest.approx(std(h + a), rel=1e-5)
            h = h + a
            h = h + layer.mlp(layer.norm2(h))
    rows = df[df["metric"] == "branch_std"]
    assert list(rows["layer_index"]) == [0, 1, 2, 3]
    assert len(values(df, "response_std")) == 4  # nn.LayerNorm counts as a norm layer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(), r"needs branch="),
        (dict(branch="a b"), r"point 'a b' must be 'name'"),
        (dict(branch="x", adds={"a": dict(branch="x")}), r"either branch=.* or adds="),
        (dict(adds={"a": dict(skip=":in")}), r"adds\['a'\] takes branch="),
    ],
)
def test_bad_registrations_say_what_to_write(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resviz.register_block(UnmarkedResidualBlock, **kwargs)
    with pytest.raises(TypeError, match="needs a torch.nn.Module subclass"):
        resviz.register_block("UnmarkedResidualBlock", branch="norm")


def test_a_branch_point_the_block_lacks_is_named():
    resviz.register_block(UnmarkedResidualBlock, branch="bn2", skip=":in")
    with pytest.raises(ValueError, match=r"block 'blocks\.0' .* has none of the branch points 'bn2'"):
        Recorder(Net(UnmarkedResidualBlock))
