"""CIFAR ResNets and plain nets of depth 6n+2 (He et al. 2015, Sec. 4.2).

Layer names follow akamaster/pytorch_resnet_cifar10 (`conv1, bn1, layer{1,2,3}.{i}.conv1/bn1/conv2/bn2,
linear`), so its checkpoints load with `strict=True`. Every 3x3 conv is followed by a *norm slot*
(`bn1`/`bn2`): a BatchNorm, a GroupNorm, or `NoNorm` (an identity), so the quantity of Fig. 7 (a 3x3
layer's output after normalisation, before ReLU or addition) always has a module to observe.

Each block carries identity probe points for the Recorder:
    probe_branch  end of the residual branch F(x), before the addition (after the branch scale, if any)
    probe_skip    the skip path (identity / option A / option B), before the addition (ResNets only)
    probe_sum     branch + skip, before the block's ReLU (plain nets: the branch itself)
    probe_out     the block's output, after its ReLU
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "layer", "group", "none")
SHORTCUTS = ("A", "B")
BRANCH_INITS = (None, "skipinit", "rezero", "fixup")
FIXUP_LAYERS_PER_BRANCH = 2  # m in Fixup's L^(-1/(2m-2)): conv1 and conv2 of a basic block
GROUPS = 8  # GroupNorm groups for norm="group" (2/4/8 channels per group in the 16/32/64 stages)


class Probe(nn.Identity):
    """An identity module that marks a measurement point; the Recorder hooks it."""


class NoNorm(nn.Identity):
    """The norm slot of a net built with norm="none": passes the conv output through."""


@dataclass(frozen=True)
class ModelSpec:
    """What a resviz model is, for the records table and for refusing mismatched checkpoints."""

    arch: str  # "resnet" | "plain"
    depth: int  # 6n+2
    norm: str
    shortcut: str  # "A" | "B" | "none" for plain nets
    branch_init: str | None
    width: int
    num_classes: int


def check_depth(depth: int) -> int:
    """Return n for depth = 6n+2, or raise naming valid depths."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth={depth!r} must be 6n+2 with n >= 1, e.g. 8, 14, 20, 32, 44, 56, 110 or 1202")
    return (depth - 2) // 6


def make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":  # over C*H*W of each example, per-channel affine (Ba et al. 2016 for convs)
        return nn.GroupNorm(1, channels)
    if norm == "group":
        return nn.GroupNorm(min(GROUPS, channels), channels)
    if norm == "none":
        return NoNorm()
    raise ValueError(f"norm={norm!r} is unknown; use one of {', '.join(NORMS)}")


class ShortcutA(nn.Module):
    """Option A: parameter-free. Subsample by 2 and zero-pad the new channels, half on each side
    (akamaster's `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4))`)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C + 2*pad, H/2, W/2)
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad_channels={self.pad}"


class BasicBlock(nn.Module):
    """conv-norm-ReLU-conv-norm (+ skip) then ReLU, with probe points."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        *,
        plain: bool,
        shortcut: str,
        norm: str,
        branch_init: str | None,
    ):
        super().__init__()
        self.plain = plain
        self.branch_init = branch_init
        self.downsamples = stride != 1 or in_planes != planes
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, planes)
        if not plain:
            if self.downsamples:
                if shortcut == "A":
                    self.shortcut = ShortcutA(planes)
                else:
                    self.shortcut = nn.Sequential(
                        nn.Conv2d(in_planes, planes, 1, stride, bias=False), make_norm(norm, planes)
                    )
            else:
                self.shortcut = nn.Sequential()
            self.probe_skip = Probe()
        if branch_init in ("skipinit", "rezero"):
            self.branch_scale = nn.Parameter(torch.zeros(()))
        elif branch_init == "fixup":  # Zhang et al. 2019: a scalar bias before each conv and activation, a scale
            self.branch_scale = nn.Parameter(torch.ones(()))
            self.fixup_bias1a = nn.Parameter(torch.zeros(()))
            self.fixup_bias1b = nn.Parameter(torch.zeros(()))
            self.fixup_bias2a = nn.Parameter(torch.zeros(()))
            self.fixup_bias2b = nn.Parameter(torch.zeros(()))
        self.probe_branch = Probe()
        self.probe_sum = Probe()
        self.probe_out = Probe()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_init == "fixup":
            out = F.relu(self.bn1(self.conv1(x + self.fixup_bias1a)) + self.fixup_bias1b)
            return self.bn2(self.conv2(out + self.fixup_bias2a)) * self.branch_scale + self.fixup_bias2b
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.branch_init is not None:
            out = out * self.branch_scale
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C, H', W')
        branch = self.probe_branch(self.branch(x))
        if self.plain:
            out = self.probe_sum(branch)
        else:
            # Fixup's official code feeds the downsampling shortcut x + bias1a (the input of conv1 as well)
            skip_in = x + self.fixup_bias1a if self.branch_init == "fixup" and self.downsamples else x
            out = self.probe_sum(branch + self.probe_skip(self.shortcut(skip_in)))
        if self.branch_init != "rezero":  # ReZero: x_{l+1} = x_l + a F(x_l), nothing after the sum
            out = F.relu(out)
        return self.probe_out(out)


class CifarResNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        n = check_depth(spec.depth)
        w = spec.width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = make_norm(spec.norm, w)
        in_planes = w
        for stage, (planes, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2)], start=1):
            blocks = []
            for i in range(n):
                blocks.append(
                    BasicBlock(
                        in_planes,
                        planes,
                        stride if i == 0 else 1,
                        plain=spec.arch == "plain",
                        shortcut=spec.shortcut,
                        norm=spec.norm,
                        branch_init=spec.branch_init,
                    )
                )
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(4 * w, spec.num_classes)
        if spec.branch_init == "fixup":  # Fixup's scalar biases before the stem's ReLU and before the classifier
            self.fixup_bias1 = nn.Parameter(torch.zeros(()))
            self.fixup_bias2 = nn.Parameter(torch.zeros(()))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():  # akamaster / He init: kaiming_normal_ (fan_in, gain sqrt 2)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        if self.spec.branch_init == "fixup":
            self._init_fixup()

    def _init_fixup(self) -> None:
        """Zhang et al. 2019, rules 1-3, as their official CIFAR code (hongyi-zhang/Fixup) does them: the classifier
        and each branch's last conv at zero; each branch's first conv He-initialised (normal, fan-out, gain √2)
        then scaled by L^(-1/(2m-2)), L = residual branches, m = 2 layers per branch, i.e. L^(-1/2); the scalar
        biases at 0 and the branch multipliers at 1 (set where they are made). The stem conv keeps PyTorch's
        default init (kaiming_uniform_ with a = √5: U(±1/√fan_in), std 0.111 for 3×3×3), as in the official
        code, which never re-initialises it; only the branches are rescaled."""
        num_branches, layers_per_branch = 3 * check_depth(self.spec.depth), FIXUP_LAYERS_PER_BRANCH
        scale = num_branches ** (-1.0 / (2 * layers_per_branch - 2))
        self.conv1.reset_parameters()  # PyTorch's default Conv2d init (the official stem), not He normal
        with torch.no_grad():
            for _, _, _, block in iter_blocks(self):
                w = block.conv1.weight  # (out, in, 3, 3)
                fan_out = w.shape[0] * w.shape[2] * w.shape[3]
                w.normal_(0.0, (2.0 / fan_out) ** 0.5 * scale)
                block.conv2.weight.zero_()
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, num_classes)
        fixup = self.spec.branch_init == "fixup"
        out = self.bn1(self.conv1(x))
        out = F.relu((out + self.fixup_bias1) if fixup else out)
        out = self.layer3(self.layer2(self.layer1(out)))
        pooled = out.mean((2, 3))  # global average pool over H, W: (B, 4w)
        return self.linear((pooled + self.fixup_bias2) if fixup else pooled)


def cifar_resnet(
    depth: int,
    *,
    plain: bool = False,
    shortcut: str = "A",
    norm: str = "batch",
    branch_init: str | None = None,
    width: int = 16,
    num_classes: int = 10,
) -> CifarResNet:
    """He et al.'s CIFAR net of depth 6n+2: a ResNet, or with plain=True the same net without shortcuts.

    shortcut: "A" (parameter-free, the paper's CIFAR choice) or "B" (1x1 conv + norm projection).
    norm: "batch" | "layer" (over C,H,W per example) | "group" (8 groups) | "none".
    branch_init: None | "skipinit" (x + a F(x), a=0, then ReLU) | "rezero" (x + a F(x), a=0, no ReLU after)
                 | "fixup" (Zhang et al. 2019; needs norm="none").
    """
    check_depth(depth)
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is unknown; use one of {', '.join(NORMS)}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut={shortcut!r} is unknown; use 'A' (zero-padded identity) or 'B' (1x1 projection)")
    if branch_init not in BRANCH_INITS:
        raise ValueError(f"branch_init={branch_init!r} is unknown; use None, 'skipinit', 'rezero' or 'fixup'")
    if branch_init is not None and plain:
        raise ValueError(
            f"branch_init={branch_init!r} scales a residual branch against its skip path; "
            "a plain net has no skip path: use plain=False"
        )
    if branch_init == "fixup" and norm != "none":
        raise ValueError(
            f"branch_init='fixup' with norm={norm!r} makes no sense: Fixup replaces normalisation "
            "(its rescaling would be undone by the norm layers); use norm='none'"
        )
    if not isinstance(width, int) or width < 4 or width % 4:
        raise ValueError(f"width={width!r} must be a positive multiple of 4 (option A pads width/4 channels per side)")
    spec = ModelSpec(
        arch="plain" if plain else "resnet",
        depth=depth,
        norm=norm,
        shortcut="none" if plain else shortcut,
        branch_init=branch_init,
        width=width,
        num_classes=num_classes,
    )
    return CifarResNet(spec)


def iter_blocks(model: nn.Module):
    """Yield (stage, index, dotted name, block) for every BasicBlock of a resviz model, in depth order."""
    for stage in (1, 2, 3):
        layer = getattr(model, f"layer{stage}", None)
        if layer is None:
            continue
        for i, block in enumerate(layer):
            yield stage, i, f"layer{stage}.{i}", block


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_macs(depth: int, width: int = 16) -> int:
    """Multiply-accumulates of one forward pass at 32x32 (option A; BN, ReLU and pooling not counted)."""
    n = check_depth(depth)
    # The 6n 3x3 convs after the stem each cost 9 * width^2 * 32^2 (a stage doubles the channels and halves
    # the map), except the two strided ones entering stages 2 and 3, which cost half: 6n - 1 full convs.
    per_conv = 9 * width * width * 32 * 32
    stem, head = 27 * width * 32 * 32, 4 * width * 10  # 3 -> width channels at 32x32; the linear layer
    return per_conv * (6 * n - 1) + stem + head


def describe(model: nn.Module) -> str:
    spec: ModelSpec = model.spec
    extra = f", branch_init={spec.branch_init}" if spec.branch_init else ""
    return (
        f"{spec.arch}-{spec.depth} (norm={spec.norm}, shortcut={spec.shortcut}{extra}): "
        f"{count_parameters(model):,} parameters"
    )


def is_resviz_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "spec", None), ModelSpec)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside torch.compile's and (Distributed)DataParallel's wrappers: the one whose submodules are
    named as the user built them (and get the Recorder's hooks)."""
    while True:
        dynamo = sys.modules.get("torch._dynamo")  # loaded if anything was compiled; importing it takes seconds
        if dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


NORM_NAME = re.compile(r"layer_?norm|rms_?norm", re.IGNORECASE)  # HF LlamaRMSNorm, T5LayerNorm, timm RmsNorm
_NORM_KINDS = ((nn.modules.batchnorm._BatchNorm, "batch"), (nn.GroupNorm, "group"),
               (nn.modules.instancenorm._InstanceNorm, "instance"), (nn.LayerNorm, "layer"), (nn.RMSNorm, "rms"))


def norm_kind(module: nn.Module) -> str | None:
    """A norm layer's kind as the stats table's `norm` column names it: "batch", "layer", "group", "instance",
    "rms"; None for a module that is not a norm layer (classes named *LayerNorm* / *RMSNorm*, such as Hugging
    Face's, count by their name)."""
    found = next((kind for cls, kind in _NORM_KINDS if isinstance(module, cls)), None)
    if found is None and NORM_NAME.search(type(module).__name__):
        found = "rms" if "rms" in type(module).__name__.lower() else "layer"
    return found


def model_norm(model: nn.Module) -> str:
    """The norm kind of a model: its norm layers' one kind ("batch", "layer", ...), several joined by "+" in order
    of appearance ("batch+layer"), "none" when it has none."""
    kinds = [k for k in (norm_kind(m) for m in model.modules()) if k is not None]
    return "+".join(dict.fromkeys(kinds)) or "none"


def model_identity(model: nn.Module) -> dict:
    """What a model is, for the run metadata of its rows and its run folder's config.json:

    arch, depth, norm, shortcut   a resviz model's spec; other models: the class name, -1, the kind of its norm
                                  layers (`model_norm`: "batch", "layer", ...), "unknown"
    model, family                 resviz's spec ("resnet20", "resviz"), timm's pretrained_cfg architecture
                                  ("convnext_atto", "timm convnext"), a Hugging Face config's name or model_type
                                  ("gpt2", "hf gpt2"), torchvision's module ("torchvision resnet"), else the class
                                  name and its top-level package
    """
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec):
        return {"arch": str(spec.arch), "depth": int(spec.depth), "norm": str(spec.norm),
                "shortcut": str(spec.shortcut), "model": f"{spec.arch}{spec.depth}", "family": "resviz"}
    info = {"arch": type(model).__name__, "depth": -1, "norm": model_norm(model), "shortcut": "unknown"}
    module, leaf = type(model).__module__, type(model).__module__.rpartition(".")[2]
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    cfg = getattr(model, "pretrained_cfg", None)
    if module.startswith("transformers.") and isinstance(model_type, str):
        name, family = str(getattr(config, "_name_or_path", "") or model_type), f"hf {model_type}"
    elif module.startswith("timm.") and isinstance(cfg, dict) and cfg.get("architecture"):
        name, family = str(cfg["architecture"]), f"timm {leaf}"
    elif module.startswith("torchvision."):
        name, family = type(model).__name__, f"torchvision {leaf}"
    else:
        name, family = type(model).__name__, module.partition(".")[0]
    return {**info, "model": name, "family": family}


__all__ = [
    "BRANCH_INITS",
    "NORMS",
    "SHORTCUTS",
    "BasicBlock",
    "CifarResNet",
    "ModelSpec",
    "NoNorm",
    "Probe",
    "ShortcutA",
    "check_depth",
    "cifar_resnet",
    "count_parameters",
    "describe",
    "forward_macs",
    "is_resviz_model",
    "iter_blocks",
    "make_norm",
    "model_identity",
    "model_norm",
    "norm_kind",
    "unwrap",
]

