"""The block-spec registry: where a residual block's branch, skip, sum and output are, one entry per family.

A `BlockSpec` says, relative to a block module, which tensors are its measurement points:

    branch  the end of the residual branch F(x), before the addition
    skip    the skip path (identity or projection), before the addition; absent for plain nets
    sum     branch + skip, before whatever follows the addition
    out     the block's output

Each point is a list of candidate `Point`s (the output or the input of a submodule, "" = the block itself); the
first one the block has wins, so torchvision's skip is "the output of `downsample`, else the block's input".
A block with several residual additions (a transformer layer: attention, then MLP) lists one `ResidualAdd`
each, told apart in the row names by `ResidualAdd.name`. A block family is found by class (qualified names,
so no optional package is imported to look: subclasses match too) or, for resviz's own blocks and any block a
user marks, by its `resviz.models.Probe` children. Supporting a new family means appending one entry to
`BLOCK_SPECS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from resviz.models import NoNorm, Probe

PROBE_NAMES = ("probe_branch", "probe_skip", "probe_sum", "probe_out")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, NoNorm)
SKIP_PATH_NAMES = frozenset({"shortcut", "downsample"})
_BLOCK_NAME = re.compile(r"block|bottleneck|residual", re.IGNORECASE)


@dataclass(frozen=True)
class Point:
    """A tensor of a block: the output of submodule `module` ("" = the block), or its first input if `input`.
    `holds_sum`: an input that is the branch tensor itself, now holding branch + skip (torchvision adds in place,
    `out += identity`, then calls `self.relu(out)`, a module it also calls earlier in the block)."""

    module: str
    input: bool = False
    holds_sum: bool = False


@dataclass(frozen=True)
class ResidualAdd:
    """One addition branch + skip inside a block; each point lists candidates, the first present one wins."""

    branch: tuple[Point, ...]
    skip: tuple[Point, ...] = ()  # () or none present: no skip path (a plain net)
    sum: tuple[Point, ...] = ()
    name: str = ""  # row-name infix for blocks with several additions: "layer1.0" + ".attn" + ".probe_branch"


@dataclass(frozen=True)
class BlockSpec:
    """One block family: how to recognise it and where its points are."""

    family: str
    adds: tuple[ResidualAdd, ...]
    out: tuple[Point, ...] = (Point(""),)
    classes: tuple[str, ...] = ()  # qualified class names, e.g. "torchvision.models.resnet.BasicBlock"
    marker: type[nn.Module] | None = None  # or: a block with children of this type named like its points
    channels: tuple[str, ...] = ()  # submodules whose width is the points' channel count; else the last conv

    def matches(self, module: nn.Module) -> bool:
        if self.marker is not None:
            return any(isinstance(getattr(module, p.module, None), self.marker) for p in self._points() if p.module)
        return any(f"{k.__module__}.{k.__qualname__}" in self.classes for k in type(module).__mro__)

    def find(self, block: nn.Module, candidates: tuple[Point, ...]) -> Point | None:
        """The first candidate point the block has (its module exists and, for marked blocks, is a marker)."""
        for point in candidates:
            module = submodule(block, point.module)
            if module is not None and (self.marker is None or not point.module or isinstance(module, self.marker)):
                return point
        return None

    def _points(self) -> list[Point]:
        return [p for a in self.adds for p in (*a.branch, *a.skip, *a.sum)] + list(self.out)


def _torchvision(cls: str, last_norm: str) -> BlockSpec:
    """torchvision's blocks: the branch ends at the last BN, the skip is `downsample` or the block's input, and
    the sum is what `relu` receives after `out += identity`."""
    add = ResidualAdd(
        branch=(Point(last_norm),),
        skip=(Point("downsample"), Point("", input=True)),
        sum=(Point("relu", input=True, holds_sum=True),),
    )
    return BlockSpec(f"torchvision {cls}", (add,), classes=(f"torchvision.models.resnet.{cls}",), channels=(last_norm,))


BLOCK_SPECS: list[BlockSpec] = [
    # resviz's BasicBlock, and any block marked the same way: identity Probe modules at the four points
    BlockSpec(
        "Probe-marked",
        adds=(ResidualAdd((Point("probe_branch"),), (Point("probe_skip"),), (Point("probe_sum"),)),),
        out=(Point("probe_out"),),
        marker=Probe,
        channels=("conv2",),
    ),
    _torchvision("Bottleneck", "bn3"),
    _torchvision("BasicBlock", "bn2"),
]


def submodule(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted `path` below root ("" = root), or None where there is none (e.g. downsample=None)."""
    module = root
    for part in path.split(".") if path else ():
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def spec_for(module: nn.Module) -> BlockSpec | None:
    return next((spec for spec in BLOCK_SPECS if spec.matches(module)), None)


def width(module: nn.Module) -> int | None:
    """The channel count of a module's output, where its type tells it."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return None


def block_channels(name: str, spec: BlockSpec, block: nn.Module) -> int:
    """Channels at a block's points: the first of spec.channels it has, else its last convolution."""
    for path in spec.channels:
        module = submodule(block, path)
        if module is not None and width(module) is not None:
            return width(module)
    convs = [m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        raise ValueError(f"block '{name}' ({spec.family}) has no convolution to tell its channel count from")
    return convs[-1].out_channels


def norm_channels(root: nn.Module, name: str, module: nn.Module) -> int:
    """Channels of a norm layer; a NoNorm takes those of the conv it follows (bn1 <- conv1)."""
    if width(module) is not None:
        return width(module)
    parent_name, _, leaf = name.rpartition(".")
    conv = getattr(submodule(root, parent_name), "conv" + leaf.removeprefix("bn"), None)
    if isinstance(conv, nn.modules.conv._ConvNd):
        return conv.out_channels
    raise ValueError(f"cannot tell the channel count of the NoNorm at '{name}': name it bnK after a convK")


def _looks_like_block(module: nn.Module) -> bool:
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    children = dict(module.named_children())
    return bool(_BLOCK_NAME.search(type(module).__name__)) or bool(SKIP_PATH_NAMES & set(children))


def find_blocks(root: nn.Module) -> tuple[list[tuple[str, BlockSpec, nn.Module]], list[tuple[str, nn.Module]]]:
    """(blocks as (name, spec, module) in depth order, block-like modules no spec knows). Nothing inside a
    block (or an unknown block) is looked at: named_modules() is pre-order, so a subtree is one run of names."""
    blocks, unknown, inside = [], [], None
    for name, module in root.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        spec = spec_for(module)
        if spec is not None:
            blocks.append((name, spec, module))
        elif name and _looks_like_block(module):
            unknown.append((name, module))
        else:
            continue
        inside = name + "."
    return blocks, unknown


def unknown_block_message(name: str, module: nn.Module) -> str:
    cls = type(module)
    return (
        f"Recorder does not know the residual block type {cls.__module__}.{cls.__qualname__} (at '{name}'): "
        "mark its branch and skip with resviz.models.Probe children, e.g. `self.probe_branch = Probe()`, "
        "`self.probe_skip = Probe()`, `self.probe_sum = Probe()`, `self.probe_out = Probe()` and "
        "`out = self.probe_out(act(self.probe_sum(self.probe_branch(f(x)) + self.probe_skip(skip(x)))))`; "
        "or record only norm layers and gradients with metrics=['response_std', 'grad_norm']"
    )


def norm_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every norm layer not on a skip path (option-B `shortcut.1`, torchvision `downsample.1`), in depth order."""
    return [
        (n, m) for n, m in root.named_modules() if isinstance(m, NORM_TYPES) and not SKIP_PATH_NAMES & set(n.split("."))
    ]
