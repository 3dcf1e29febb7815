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

import torch
from torch import nn

from resviz.models import NORM_NAME, NoNorm, Probe, ShortcutA

PROBE_NAMES = ("probe_branch", "probe_skip", "probe_sum", "probe_out")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
              nn.RMSNorm, NoNorm)
SKIP_PATH_NAMES = frozenset({"shortcut", "downsample"})
_BLOCK_NAME = re.compile(r"block|bottleneck|residual", re.IGNORECASE)


@dataclass(frozen=True)
class Point:
    """A tensor of a block: the output of submodule `module` ("" = the block), or, if `input`, its positional
    argument `arg` (or keyword argument `kwarg` when passed by name). A tuple output counts by its first item
    (Hugging Face attention returns (output, weights)). `holds_sum`: an input that is the branch tensor itself,
    now holding branch + skip (torchvision adds in place, `out += identity`, then calls `self.relu(out)`, a module
    it also calls earlier in the block)."""

    module: str
    input: bool = False
    holds_sum: bool = False
    arg: int = 0
    kwarg: str = ""

    def __str__(self) -> str:  # the register_block spelling: "name", "name:in", ":in1", ""
        return self.module + (f":in{self.arg or ''}" if self.input else "")


@dataclass(frozen=True)
class ResidualAdd:
    """One addition branch + skip inside a block; each point lists candidates, the first present one wins."""

    branch: tuple[Point, ...]
    skip: tuple[Point, ...] = ()  # () or none present: no skip path (a plain net)
    sum: tuple[Point, ...] = ()
    name: str = ""  # row-name infix for blocks with several additions: "h.0" + ".attn" + ".probe_branch"


@dataclass(frozen=True)
class BlockSpec:
    """One block family: how to recognise it and where its points are. `tokens`: the points are (B, T, C) or
    (B, H, W, C) tensors whose features are on the last dim (transformers); else (N, C, *) as in a CNN."""

    family: str
    adds: tuple[ResidualAdd, ...]
    out: tuple[Point, ...] = (Point(""),)
    classes: tuple[str, ...] = ()  # qualified class names, e.g. "torchvision.models.resnet.BasicBlock"
    marker: type[nn.Module] | None = None  # or: a block with children of this type named like its points
    channels: tuple[str, ...] = ()  # submodules whose width is the points' channel count; else the last conv
    tokens: bool = False
    strict: bool = False  # every point given must be found in each matched block (register_block's specs)

    def matches(self, module: nn.Module) -> bool:
        if self.marker is not None:
            return any(isinstance(getattr(module, p.module, None), self.marker) for p in self._points() if p.module)
        return any(qualname(k) in self.classes for k in type(module).__mro__)

    def find(self, block: nn.Module, candidates: tuple[Point, ...]) -> Point | None:
        """The first candidate point the block has (its module exists and, for marked blocks, is a marker)."""
        for point in candidates:
            module = submodule(block, point.module)
            if module is not None and (self.marker is None or not point.module or isinstance(module, self.marker)):
                return point
        return None

    def _points(self) -> list[Point]:
        return [p for a in self.adds for p in (*a.branch, *a.skip, *a.sum)] + list(self.out)


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def parse_point(text: str) -> Point:
    """register_block's spelling of a point: "conv2" (output of submodule conv2), "act:in" (its first input),
    "output:in1" (second input), ":in" (the block's input), "" (the block's output)."""
    if not isinstance(text, str) or not re.fullmatch(r"[\w.]*(:in\d?)?", text):
        raise ValueError(
            f"point {text!r} must be 'name' (a submodule's output), 'name:in' / 'name:in1' (its first / second "
            "input), ':in' (the block's input) or '' (the block's output)"
        )
    module, _, inp = text.partition(":")
    return Point(module, input=bool(inp), arg=int(inp[2:] or 0))


def _points(value, what: str) -> tuple[Point, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, Point)) else list(value)
    if not items and what == "branch":
        raise ValueError("branch=[] names no point: give where the residual branch ends, e.g. branch='bn2'")
    return tuple(p if isinstance(p, Point) else parse_point(p) for p in items)


def _torchvision(cls: str, last_norm: str) -> BlockSpec:
    """torchvision's blocks: the branch ends at the last BN, the skip is `downsample` or the block's input, and
    the sum is what `relu` receives after `out += identity`."""
    add = ResidualAdd(
        branch=(Point(last_norm),),
        skip=(Point("downsample"), Point("", input=True)),
        sum=(Point("relu", input=True, holds_sum=True),),
    )
    return BlockSpec(f"torchvision {cls}", (add,), classes=(f"torchvision.models.resnet.{cls}",), channels=(last_norm,))


def _timm_resnet(cls: str, last: str, act: str) -> BlockSpec:
    """timm's ResNet blocks: branch = drop_path, else the SE/attention layer, else the last BN; `x += shortcut`
    in place, then `act2`/`act3` (in place, called once) receives the sum."""
    add = ResidualAdd(
        branch=(Point("drop_path"), Point("se"), Point(last)),
        skip=(Point("downsample"), Point("", input=True)),
        sum=(Point(act, input=True),),
    )
    return BlockSpec(f"timm ResNet {cls}", (add,), classes=(f"timm.models.resnet.{cls}",), channels=(last,))


_PREACT = ResidualAdd(  # timm ResNetV2 pre-activation blocks: `return drop_path(conv3(...)) + shortcut`
    branch=(Point("drop_path"),), skip=(Point("downsample"), Point("", input=True)), sum=(Point(""),)
)
_TWO_ADDS = {  # pre-norm transformer layer: x + attn(norm1(x)), then x + mlp(norm2(x)); (branch, norm2) per add
    "timm ViT": (("drop_path1", "drop_path2"), "norm2"),
    "HF GPT-2": (("attn", "mlp"), "ln_2"),
    "HF Llama": (("self_attn", "mlp"), "post_attention_layernorm"),
}


def _prenorm(family: str, classes: tuple[str, ...], channels: str) -> BlockSpec:
    (first, second), norm2 = _TWO_ADDS[family]
    mid = Point(norm2, input=True, kwarg="hidden_states")
    block_in = Point("", input=True, kwarg="hidden_states")
    adds = (
        ResidualAdd((Point(first),), (block_in,), (mid,), name=".attn"),
        ResidualAdd((Point(second),), (mid,), (Point(""),), name=".mlp"),
    )
    return BlockSpec(family, adds, classes=classes, channels=(channels,), tokens=True)


def _post_norm_add(sub: str, name: str) -> ResidualAdd:
    """BERT: `LayerNorm(dropout(dense(h)) + input_tensor)` inside the sub-module `sub`."""
    return ResidualAdd(
        (Point(f"{sub}.dropout"),),
        (Point(sub, input=True, arg=1, kwarg="input_tensor"),),
        (Point(f"{sub}.LayerNorm", input=True),),
        name=name,
    )


_HF = "transformers.models"
BUILTIN_SPECS: tuple[BlockSpec, ...] = (
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
    _timm_resnet("Bottleneck", "bn3", "act3"),
    _timm_resnet("BasicBlock", "bn2", "act2"),
    BlockSpec("timm ResNetV2 pre-activation", (_PREACT,), channels=("conv3", "conv2"), classes=(
        "timm.models.resnetv2.PreActBasic", "timm.models.resnetv2.PreActBottleneck")),
    BlockSpec("timm ResNetV2 Bottleneck", (ResidualAdd(
        _PREACT.branch, _PREACT.skip, (Point("act3", input=True),)),), channels=("conv3",),
        classes=("timm.models.resnetv2.Bottleneck",)),
    BlockSpec("timm ConvNeXt", (ResidualAdd((Point("drop_path"),), (Point("shortcut"),), (Point(""),)),),
              classes=("timm.models.convnext.ConvNeXtBlock",), channels=("conv_dw",)),
    _prenorm("timm ViT", ("timm.models.vision_transformer.Block",), "norm1"),
    _prenorm("HF GPT-2", (f"{_HF}.gpt2.modeling_gpt2.GPT2Block",), "ln_1"),
    _prenorm("HF Llama", tuple(f"{_HF}.{m}.modeling_{m}.{c}DecoderLayer" for m, c in (
        ("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"))), "input_layernorm"),
    BlockSpec("HF BERT (post-norm)", (_post_norm_add("attention.output", ".attn"), _post_norm_add("output", ".mlp")),
              classes=(f"{_HF}.bert.modeling_bert.BertLayer", f"{_HF}.roberta.modeling_roberta.RobertaLayer"),
              channels=("output.LayerNorm",), tokens=True),
)
_REGISTERED: dict[str, BlockSpec] = {}  # qualified class name -> the user's spec (register_block)
BLOCK_SPECS: list[BlockSpec] = list(BUILTIN_SPECS)  # the registry: users' specs first, then the built-in ones


def register_block(cls, branch=None, skip=None, sum=None, *, out="", adds=None, channels=None, tokens=False):
    """Tell the Recorder where a residual block class's branch, skip and sum are, without editing the class.

    Points are strings: "conv2" (the output of submodule conv2), "act:in" (the first input of submodule act),
    "proj:in1" (its second input), ":in" (the block's input), "" (the block's output); a list gives candidates,
    the first the block has wins (["downsample", ":in"]: a projection where there is one, else the input).
    One addition: branch=, skip=, sum=; several: adds={"attn": dict(branch=..., skip=..., sum=...), ...}.
    channels: submodule(s) whose width is the points' channel count (default: the block's last convolution);
    tokens=True for (B, T, C) points (features on the last dim). Registering a class again replaces its spec;
    subclasses match too. Returns the BlockSpec."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_block needs a torch.nn.Module subclass, got {cls!r}")
    if adds is None:
        if branch is None:
            raise ValueError(f"register_block({cls.__name__}, ...) needs branch= (where the residual branch ends)")
        adds = {"": dict(branch=branch, skip=skip, sum=sum)}
    elif branch is not None or skip is not None or sum is not None:
        raise ValueError("give either branch=/skip=/sum= (one addition) or adds={name: dict(...)}, not both")
    parts = []
    for name, where in adds.items():
        unknown = set(where) - {"branch", "skip", "sum"}
        if unknown or "branch" not in where:
            raise ValueError(f"adds[{name!r}] takes branch=, skip=, sum= (branch required); got {sorted(where)}")
        parts.append(ResidualAdd(_points(where["branch"], "branch"), _points(where.get("skip"), "skip"),
                                 _points(where.get("sum"), "sum"), name=f".{name}" if name else ""))
    key = qualname(cls)
    spec = BlockSpec(f"registered {cls.__name__}", tuple(parts), out=_points(out, "out"), classes=(key,),
                     channels=tuple([channels] if isinstance(channels, str) else channels or ()), tokens=tokens,
                     strict=True)  # a point the block lacks is a typo: refused when a Recorder plans the model
    _REGISTERED[key] = spec
    BLOCK_SPECS[:] = [*_REGISTERED.values(), *BUILTIN_SPECS]
    return spec


def unregister_block(cls) -> None:
    """Forget a register_block entry (e.g. at the end of a test); the built-in specs stay."""
    _REGISTERED.pop(qualname(cls), None)
    BLOCK_SPECS[:] = [*_REGISTERED.values(), *BUILTIN_SPECS]


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
    """The channel (feature) count of a module's output, where its type tells it."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    shape = getattr(module, "normalized_shape", None)  # LayerNorm, torch / timm RMSNorm
    if isinstance(shape, (tuple, list, torch.Size)) and shape:
        return int(shape[-1])
    weight = getattr(module, "weight", None)  # HF's RMSNorm classes: a (C,) scale
    if is_norm(module) and isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return weight.shape[0]
    return None


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm (torch's, timm's, any
    class named *LayerNorm* / *RMSNorm* such as Hugging Face's LlamaRMSNorm), or resviz's NoNorm."""
    return isinstance(module, NORM_TYPES) or bool(NORM_NAME.search(type(module).__name__))


def features_last(module: nn.Module) -> bool:
    """Whether a norm layer's features are its input's last dim (LayerNorm / RMSNorm over (B, T, C) or NHWC)
    rather than dim 1 (BatchNorm, GroupNorm, and the NCHW "...2d" norms such as timm's LayerNorm2d)."""
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                           NoNorm)):
        return False
    return not type(module).__name__.lower().endswith("2d")


def block_channels(name: str, spec: BlockSpec, block: nn.Module) -> int:
    """Channels at a block's points: the first of spec.channels it has, else its last convolution (CNNs) or
    its last norm layer (token blocks)."""
    for path in spec.channels:
        module = submodule(block, path)
        if module is not None and width(module) is not None:
            return width(module)
    kinds = (lambda m: is_norm(m) and width(m) is not None) if spec.tokens else (
        lambda m: isinstance(m, nn.modules.conv._ConvNd))
    found = [m for m in block.modules() if kinds(m)]
    if not found:
        raise ValueError(f"block '{name}' ({spec.family}) has no {'norm layer' if spec.tokens else 'convolution'} "
                         "to tell its channel count from: register it with channels='<submodule>'")
    return width(found[-1])


def skip_signal(block: nn.Module, channels: int) -> tuple[int, int]:
    """The channels [lo, hi) of a block's skip tensor that carry signal. resviz's option-A shortcut (`ShortcutA`,
    as `models.py` builds it: `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))`) puts `pad` zero channels on each
    side, so (pad, channels - pad); every other skip path carries all of them."""
    for name in SKIP_PATH_NAMES:
        path = getattr(block, name, None)
        if isinstance(path, ShortcutA) and 0 < 2 * path.pad < channels:
            return path.pad, channels - path.pad
    return 0, channels


PARAM_KINDS = ("weight", "norm_scale", "norm_shift", "bias", "embedding", "other")


def param_kind(owner: nn.Module, leaf: str, param: torch.Tensor) -> str:
    """What a parameter is, from the module that holds it and its name there: "weight" (a conv or linear weight,
    any matrix or kernel of a non-norm layer: Conv*d, Linear, Hugging Face's Conv1D), "norm_scale" / "norm_shift"
    (a norm layer's γ / β), "bias" (of a conv or linear), "embedding" (a lookup table), else "other" (the scalars
    of SkipInit / ReZero / Fixup, layer scales, position embeddings held as bare parameters)."""
    if is_norm(owner):
        return {"weight": "norm_scale", "bias": "norm_shift"}.get(leaf, "other")
    if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if leaf.endswith("bias") and param.dim() >= 1:
        return "bias"
    if leaf.endswith("weight") and param.dim() >= 2:
        return "weight"
    return "other"


def norm_channels(root: nn.Module, name: str, module: nn.Module) -> int:
    """Channels of a norm layer; a NoNorm takes those of the conv it follows (bn1 <- conv1)."""
    if width(module) is not None:
        return width(module)
    parent_name, _, leaf = name.rpartition(".")
    conv = getattr(submodule(root, parent_name), "conv" + leaf.removeprefix("bn"), None)
    if isinstance(conv, nn.modules.conv._ConvNd):
        return conv.out_channels
    raise ValueError(f"cannot tell the channel count of the norm layer at '{name}' ({type(module).__name__}): "
                     "name a NoNorm bnK after a convK, or give the layer a 1-d weight")


def _looks_like_block(module: nn.Module) -> bool:
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    children = dict(module.named_children())
    return bool(_BLOCK_NAME.search(type(module).__name__)) or bool(SKIP_PATH_NAMES & set(children))


def find_blocks(root: nn.Module) -> tuple[list[tuple[str, BlockSpec, nn.Module]], list[tuple[str, nn.Module]]]:
    """(blocks as (name, spec, module) in depth order, block-like modules no spec knows). Nothing inside a
    known block is looked at (named_modules() is pre-order, so a subtree is one run of names); a block-like
    module that holds known blocks (a stage with a `downsample` child) is a container, not an unknown block."""
    blocks, unknown, inside = [], [], None
    for name, module in root.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        spec = spec_for(module)
        if spec is not None:
            blocks.append((name, spec, module))
            inside = name + "."
        elif name and _looks_like_block(module):
            unknown.append((name, module))
    names = [b for b, _, _ in blocks]
    unknown = [(u, m) for u, m in unknown if not any(b.startswith(u + ".") for b in names)]
    return blocks, unknown


def _guess(module: nn.Module) -> tuple[str, str]:
    """A plausible register_block call's branch and skip for an unknown block: its last child with parameters
    that is not a skip path; the skip path child, else the block's input."""
    children = [(n, m) for n, m in module.named_children() if n not in SKIP_PATH_NAMES]
    with_params = [n for n, m in children if any(True for _ in m.parameters())]
    branch = with_params[-1] if with_params else (children[-1][0] if children else "<submodule>")
    skip = next((n for n in module._modules if n in SKIP_PATH_NAMES and module._modules[n] is not None), "")
    return branch, f"[{skip!r}, ':in']" if skip else "':in'"


def register_call(cls: type, **points) -> str:
    """A `register_block` call for `cls` that runs as pasted, in a script or a notebook: a class of the running
    script or notebook (`__main__`) by its name; any other class imported first from its module."""
    local = "<locals>" in cls.__qualname__  # defined inside a function: by its name, pasted in that function
    name = cls.__name__ if local else cls.__qualname__
    top = name.partition(".")[0]
    head = "import resviz; " + ("" if local or cls.__module__ == "__main__" else f"from {cls.__module__} import {top}; ")
    args = "".join(f", {key}={value}" for key, value in points.items())
    return f"{head}resviz.register_block({name}{args})"


def unknown_block_message(name: str, module: nn.Module) -> str:
    cls = type(module)
    branch, skip = _guess(module)
    return (
        f"Recorder does not know the residual block type {qualname(cls)} (at '{name}'): tell it where the branch "
        f"ends and the skip comes from, e.g. `{register_call(cls, branch=repr(branch), skip=skip)}` before "
        "creating the Recorder (a point is a submodule's output 'name', its input 'name:in', the block's input "
        "':in' or its output ''; add sum='act:in' where an activation follows the addition; see docs/blocks.md); "
        "or record only norm layers and gradients with metrics=['response_std', 'grad_norm']"
    )


def norm_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every norm layer not on a skip path (option-B `shortcut.1`, torchvision `downsample.1`), in depth order;
    a norm nested in another norm (timm's norm-act wrappers) counts once, as the outer one."""
    found: list[tuple[str, nn.Module]] = []
    for n, m in root.named_modules():
        if is_norm(m) and not SKIP_PATH_NAMES & set(n.split(".")):
            if not any(n.startswith(f + ".") for f, _ in found[-1:]):
                found.append((n, m))
    return found
