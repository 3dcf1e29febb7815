"""Recorder: per-layer statistics of a network while it trains or evaluates, reduced on the device.

    with Recorder(model, every=20) as rec:          # hooks exist only inside the block
        for step in range(steps):
            loss_fn(model(x), y).backward()
            rec.end_step(step, epoch=step * B / N)  # grad norms, queue the step's stats; no host sync
            opt.step(); opt.zero_grad(set_to_none=True)
    df = rec.frame()                                # the tidy table of schema.py

Statistics are taken on steps with `step % every == 0`. Each observed tensor x (N, C, *) is reduced inside its
hook, at once (later in-place ops such as torchvision's `out += identity` cannot alter it), to per-channel first
and second moments in fp32 written into one preallocated device vector; `end_step` adds the gradient norms (one
`torch._foreach_norm`) and copies the vector into a device ring buffer of `flush_every` rows. The host sees the
numbers once per flush (one device-to-host copy, non-blocking into pinned memory on CUDA); the table's
statistics are derived there in float64. Moments: CUDA uses `torch.var_mean` (one pass); the CPU uses fp32 sums
of x and x^2 per (sample, channel) row, because CPU `var_mean` is 15-50x slower; its variance then carries a
relative error of about 1e-7 * (mean/std)^2 per channel (1e-4 for a channel whose |mean| is 30 std).

Rows (metric -> `layer` value; `layer_index` counts along depth within the metric, from 0):
    response_std          every norm layer's output (BatchNorm, GroupNorm, InstanceNorm, resviz NoNorm, so a
                          norm="none" net gives the conv output): He et al. Fig. 7's quantity. layer = the norm
                          module ("bn1", "layer2.3.bn2"). Norm layers on a skip path (option-B `shortcut.1`,
                          torchvision `downsample.1`) are not 3x3 layers and are left out.
    response_channel_std  per_channel=True: the same per channel (column `channel`; other rows channel=-1)
    branch_std            "layerS.i.probe_branch": end of F(x) before the addition (torchvision: the block's
                          last BN, bn2 / bn3)
    skip_std              "layerS.i.probe_skip": identity, option A or the projection (torchvision: downsample
                          output or the block input). Absent for plain nets.
    sum_std               "layerS.i.probe_sum": branch + skip before the block's ReLU (plain nets: the branch)
    branch_ratio          "layerS.i" (the block): ||F(x)|| / ||skip||. Absent for plain nets.
    channel_sq_mean       "layerS.i.probe_out": mean over C of (mean over N,H,W)^2 (Brock et al. 2021)
    channel_var           "layerS.i.probe_out" and "layerS.i.probe_branch": mean over C of the (biased)
                          variance over N,H,W; both rows of block k have layer_index k
    act_grad_norm         "layerS.i.probe_out": ||d loss / d block output|| (a tensor hook, recording steps only)
    grad_norm             every parameter, layer = its dotted name ("layer1.0.conv1.weight"), after backward()
    branch_scale          "layerS.i.branch_scale": the scalar of SkipInit / ReZero / Fixup blocks
For torchvision ResNets the block points are virtual and named like resviz's probes ("layer1.0.probe_sum").
Std is unbiased over N*C*H*W (torch.std). stage: 0 stem, 1.. stages, last stage + 1 for the head (4 for
resviz models, 5 for torchvision ResNets); block: index within its stage, -1 outside blocks.

Blocks are found by: resviz-style probe points (children `probe_branch`, `probe_skip`, `probe_sum`, `probe_out`
that are `resviz.models.Probe` modules; mark your own block the same way), or torchvision's BasicBlock and
Bottleneck. A module that looks like a residual block (class name with Block/Bottleneck/Residual, or a
`downsample`/`shortcut` child) but is neither is refused when block metrics are asked for.

Order within a step: begin_step (optional) -> forward -> backward -> end_step. If a step runs several forward
passes, the last one's statistics are kept; `with rec.paused():` keeps e.g. a mid-training evaluation out.
Compiled models (`torch.compile(model)` or `model.compile()`; give the Recorder either the compiled wrapper or
the module inside it): the hooks are traced into the graph, and a guard on the recording flag gives one graph
with and one without statistics. Entering and leaving the Recorder drop dynamo's compiled code for the forward
methods of the model's module classes, because hooks added or removed after compiling are otherwise ignored
(pytorch#117758); act_grad_norm's tensor hooks write in place and so stay inside the graph. Under CUDA graphs
(mode="reduce-overhead") the statistics are copied out at end_step, before the next replay.
"""
from __future__ import annotations

import contextlib
import math
import re
import sys
import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz import schema
from resviz.models import ModelSpec, NoNorm, Probe

METRICS: tuple[str, ...] = tuple(schema.METRICS)
DEFAULT_METRICS: tuple[str, ...] = tuple(m for m in METRICS if m != "response_channel_std")
BLOCK_METRICS = frozenset(
    {"branch_std", "skip_std", "sum_std", "branch_ratio", "act_grad_norm", "channel_sq_mean", "channel_var"}
)
RUN_INFO_KEYS: dict[str, type] = {"run_id": str, "arch": str, "depth": int, "norm": str, "shortcut": str, "seed": int}
PROBE_NAMES = ("probe_branch", "probe_skip", "probe_sum", "probe_out")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, NoNorm)
SKIP_PATH_NAMES = frozenset({"shortcut", "downsample"})
_BLOCK_NAME = re.compile(r"block|bottleneck|residual", re.IGNORECASE)
_STAGE_BLOCK = re.compile(r"^layer(\d+)\.(\d+)(?:\.|$)")
_SENTINEL = -1.0  # a norm is never negative: marks a scalar slot nobody wrote this step
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hooked module -> its Recorder


# ----------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Site:
    """A tensor observed in a hook. Its slots in the staging vector, from `offset`: C first moments, C second
    moments, then the number of elements per channel (the sentinel -1 until written in this step)."""

    name: str
    channels: int
    offset: int


@dataclass(frozen=True)
class HookSpec:
    """One hook: `kind` is "fwd" (module output), "pre" (module input), "sum_pre" (input, only when it is the
    tensor last seen at site `ref`), or "out" (output, moments if site >= 0, plus a gradient hook if grad >= 0)."""

    module: str
    kind: str
    site: int
    grad: int = -1  # staging offset of the act_grad_norm slot
    ref: int = -1


@dataclass(frozen=True)
class Catalog:
    """The table rows one recorded step can give, as parallel arrays (M,). `source` says how a value is derived:
    "std" / "csm" / "cvar" of site a, "ratio" of the norms of sites a and b, "chstd" of channel b of site a,
    "scalar" at staging offset a."""

    metric: np.ndarray  # str
    layer: np.ndarray  # str
    layer_index: np.ndarray  # int64
    stage: np.ndarray
    block: np.ndarray
    channel: np.ndarray
    source: np.ndarray  # str
    a: np.ndarray
    b: np.ndarray

    @staticmethod
    def of(rows: list[tuple]) -> Catalog:
        columns = list(zip(*rows)) if rows else [()] * 9
        kinds = [object, object, np.int64, np.int64, np.int64, np.int64, object, np.int64, np.int64]
        return Catalog(*(np.array(c, dtype=k) for c, k in zip(columns, kinds)))

    def codes(self, key: str) -> tuple[np.ndarray, list[str]]:
        """Category codes into the sorted unique values of a string field."""
        names, codes = np.unique(getattr(self, key).astype(str), return_inverse=True)
        return codes.astype(np.int32), [str(n) for n in names]


@dataclass(frozen=True)
class Plan:
    sites: tuple[Site, ...]
    hooks: tuple[HookSpec, ...]
    params: tuple[tuple[str, int], ...]  # (parameter name, staging offset) for grad_norm
    scales: tuple[tuple[str, int], ...]  # (parameter name, staging offset) for branch_scale
    size: int  # length of the staging vector
    rows: Catalog
    keep_ref: frozenset[int]  # sites whose last tensor a "sum_pre" hook compares against


def _channels_of_norm(root: nn.Module, name: str, module: nn.Module) -> int:
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    parent_name, _, leaf = name.rpartition(".")  # NoNorm: the conv it follows (bn1 <- conv1)
    parent = root.get_submodule(parent_name) if parent_name else root
    conv = getattr(parent, "conv" + leaf.removeprefix("bn"), None)
    if isinstance(conv, nn.modules.conv._ConvNd):
        return conv.out_channels
    raise ValueError(f"cannot tell the channel count of the NoNorm at '{name}': name it bnK after a convK")


def _block_channels(name: str, block: nn.Module) -> int:
    """Channels at a marked block's probe points: its conv2 (resviz), else its last convolution."""
    conv = getattr(block, "conv2", None)
    if not isinstance(conv, nn.modules.conv._ConvNd):
        convs = [m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if not convs:
            raise ValueError(f"block '{name}' has probe points but no convolution to tell its channel count from")
        conv = convs[-1]
    return conv.out_channels


def _torchvision_kind(module: nn.Module) -> str | None:
    from torchvision.models import resnet as tv

    if isinstance(module, tv.Bottleneck):
        return "bottleneck"
    if isinstance(module, tv.BasicBlock):
        return "basic"
    return None


def _looks_like_block(module: nn.Module) -> bool:
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    children = dict(module.named_children())
    return bool(_BLOCK_NAME.search(type(module).__name__)) or bool(SKIP_PATH_NAMES & set(children))


def _find_blocks(root: nn.Module) -> tuple[list[tuple[str, str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(blocks as (name, kind, module) in depth order, unknown block-like modules)."""
    blocks, unknown, inside = [], [], []
    for name, module in root.named_modules():
        if name and any(name.startswith(p + ".") for p in inside):
            continue
        children = dict(module.named_children())
        if any(isinstance(children.get(p), Probe) for p in PROBE_NAMES):
            kind = "probes"
        else:
            kind = _torchvision_kind(module)
        if kind is not None:
            blocks.append((name, kind, module))
            inside.append(name)
        elif name and _looks_like_block(module):
            unknown.append((name, module))
            inside.append(name)
    return blocks, unknown


def _unknown_block_message(name: str, module: nn.Module) -> str:
    cls = type(module)
    return (
        f"Recorder does not know the residual block type {cls.__module__}.{cls.__qualname__} (at '{name}'): "
        "mark its branch and skip with resviz.models.Probe children, e.g. `self.probe_branch = Probe()`, "
        "`self.probe_skip = Probe()`, `self.probe_sum = Probe()`, `self.probe_out = Probe()` and "
        "`out = self.probe_out(act(self.probe_sum(self.probe_branch(f(x)) + self.probe_skip(skip(x)))))`; "
        "or record only norm layers and gradients with metrics=['response_std', 'grad_norm']"
    )


def _positions(root: nn.Module, blocks: list[tuple[str, str, nn.Module]]):
    """A function name -> (stage, block) from "layerS.i" paths; stem (0) before the first block, head after."""
    order = {name: i for i, (name, _) in enumerate(root.named_modules())}
    spans = [(order[b], order[b] + sum(1 for _ in m.modules()) - 1) for b, _, m in blocks]
    stages = [int(m.group(1)) for b, _, _ in blocks if (m := _STAGE_BLOCK.match(b + "."))]
    head = max(stages) + 1 if stages else -1

    def position(module_name: str) -> tuple[int, int]:
        if m := _STAGE_BLOCK.match(module_name + "."):
            return int(m.group(1)), int(m.group(2))
        i = order.get(module_name)
        if not stages or i is None:  # blocks not named "layerS.i": positions unknown
            return -1, -1
        if i < spans[0][0]:
            return 0, -1
        if i > spans[-1][1]:
            return head, -1
        return -1, -1

    return position


def build_plan(root: nn.Module, metrics: frozenset[str]) -> Plan:
    """Decide which tensors to observe, where they sit in the staging vector, and which table rows follow."""
    blocks, unknown = _find_blocks(root)
    if unknown and metrics & BLOCK_METRICS:
        raise ValueError(_unknown_block_message(*unknown[0]))
    norms = [
        (n, m)
        for n, m in root.named_modules()
        if isinstance(m, NORM_TYPES) and not SKIP_PATH_NAMES & set(n.split("."))
    ]
    activation_metrics = metrics & (BLOCK_METRICS | {"response_std", "response_channel_std"})
    if activation_metrics and not norms and not blocks:
        raise ValueError(
            f"found no norm layers and no residual blocks in {type(root).__name__}: the Recorder observes "
            "norm layers (BatchNorm, GroupNorm, InstanceNorm) and residual blocks (resviz, torchvision, or "
            "blocks marked with resviz.models.Probe); for gradients only use metrics=['grad_norm']"
        )
    position = _positions(root, blocks)
    sites: list[Site] = []
    size = 0
    rows: list[tuple] = []  # (metric, layer, layer_index, stage, block, channel, source, a, b)
    hooks: list[HookSpec] = []
    keep_ref: set[int] = set()

    def add_site(name: str, channels: int) -> int:
        nonlocal size
        sites.append(Site(name, channels, size))
        size += 2 * channels + 1
        return len(sites) - 1

    def add_slot() -> int:
        nonlocal size
        size += 1
        return size - 1

    per_channel = "response_channel_std" in metrics
    need_norm = {"response_std", "response_channel_std"} & metrics
    norm_site: dict[str, int] = {}
    last_norm = {b: b + (".bn3" if kind == "bottleneck" else ".bn2") for b, kind, _ in blocks if kind != "probes"}
    branch_metrics = {"branch_std", "branch_ratio", "channel_var", "sum_std"}  # torchvision: branch = last BN
    needed_norms = set(last_norm.values()) if metrics & branch_metrics else set()
    for index, (name, module) in enumerate(norms):
        if not need_norm and name not in needed_norms:
            continue
        s = norm_site[name] = add_site(name, _channels_of_norm(root, name, module))
        hooks.append(HookSpec(name, "fwd", s))
        stage, blk = position(name)
        if "response_std" in metrics:
            rows.append(("response_std", name, index, stage, blk, -1, "std", s, 0))
        if per_channel:
            rows.extend(
                ("response_channel_std", name, index, stage, blk, c, "chstd", s, c)
                for c in range(sites[s].channels)
            )

    for k, (bname, kind, block) in enumerate(blocks):
        stage, blk = position(bname)
        has = {p: isinstance(getattr(block, p, None), Probe) for p in PROBE_NAMES}
        if kind == "probes":
            channels = _block_channels(bname, block)
            has_skip = has["probe_skip"]
        else:
            channels = root.get_submodule(last_norm[bname]).num_features
            has_skip = True
        want = {
            "branch": bool(metrics & {"branch_std", "branch_ratio", "channel_var"}),
            "skip": has_skip and bool(metrics & {"skip_std", "branch_ratio"}),
            "sum": "sum_std" in metrics,
            "out": bool(metrics & {"channel_sq_mean", "channel_var"}),
        }
        site: dict[str, int] = {}
        if kind == "probes":
            for point in ("branch", "skip", "sum"):
                if want[point] and has[f"probe_{point}"]:
                    site[point] = add_site(f"{bname}.probe_{point}", channels)
                    hooks.append(HookSpec(f"{bname}.probe_{point}", "fwd", site[point]))
            out_module = f"{bname}.probe_out" if has["probe_out"] else None
        else:
            if want["branch"] or want["sum"]:
                site["branch"] = norm_site[last_norm[bname]]
            if want["skip"]:
                site["skip"] = add_site(f"{bname}.probe_skip", channels)
                if block.downsample is not None:
                    hooks.append(HookSpec(f"{bname}.downsample", "fwd", site["skip"]))
                else:
                    hooks.append(HookSpec(bname, "pre", site["skip"]))
            if want["sum"]:
                site["sum"] = add_site(f"{bname}.probe_sum", channels)
                keep_ref.add(site["branch"])
                hooks.append(HookSpec(f"{bname}.relu", "sum_pre", site["sum"], ref=site["branch"]))
            out_module = bname
        grad = add_slot() if "act_grad_norm" in metrics and out_module else -1
        if out_module and (want["out"] or grad >= 0):
            if want["out"]:
                site["out"] = add_site(f"{bname}.probe_out", channels)
            hooks.append(HookSpec(out_module, "out", site.get("out", -1), grad=grad))
        where = (k, stage, blk, -1)
        if "branch" in site and "branch_std" in metrics:
            rows.append(("branch_std", f"{bname}.probe_branch", *where, "std", site["branch"], 0))
        if "skip" in site and "skip_std" in metrics:
            rows.append(("skip_std", f"{bname}.probe_skip", *where, "std", site["skip"], 0))
        if "sum" in site:
            rows.append(("sum_std", f"{bname}.probe_sum", *where, "std", site["sum"], 0))
        if "branch" in site and "skip" in site and "branch_ratio" in metrics:
            rows.append(("branch_ratio", bname, *where, "ratio", site["branch"], site["skip"]))
        if "out" in site and "channel_sq_mean" in metrics:
            rows.append(("channel_sq_mean", f"{bname}.probe_out", *where, "csm", site["out"], 0))
        if "channel_var" in metrics:
            if "branch" in site:
                rows.append(("channel_var", f"{bname}.probe_branch", *where, "cvar", site["branch"], 0))
            if "out" in site:
                rows.append(("channel_var", f"{bname}.probe_out", *where, "cvar", site["out"], 0))
        if grad >= 0:
            rows.append(("act_grad_norm", f"{bname}.probe_out", *where, "scalar", grad, 0))

    params: list[tuple[str, int]] = []
    if "grad_norm" in metrics:
        for index, (name, _) in enumerate(root.named_parameters()):
            params.append((name, add_slot()))
            rows.append(("grad_norm", name, index, *position(name.rpartition(".")[0]), -1, "scalar", size - 1, 0))
    scales: list[tuple[str, int]] = []
    if "branch_scale" in metrics:
        for k, (bname, _, block) in enumerate(blocks):
            if isinstance(getattr(block, "branch_scale", None), nn.Parameter):
                scales.append((f"{bname}.branch_scale", add_slot()))
                rows.append(
                    ("branch_scale", f"{bname}.branch_scale", k, *position(bname), -1, "scalar", size - 1, 0)
                )
    return Plan(tuple(sites), tuple(hooks), tuple(params), tuple(scales), size, Catalog.of(rows), frozenset(keep_ref))


# ------------------------------------------------------------------------------------------- reductions
def write_moments(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, central: bool) -> None:
    """Per-channel moments of x (N, C, *) in fp32 into first/second (C,): mean and biased variance when
    `central` (one-pass var_mean, for CUDA), else sum of x and sum of x^2 (fast on the CPU)."""
    n, c = x.shape[0], x.shape[1]
    if central:
        xf = x if x.dtype == torch.float32 else x.float()
        var, mean = torch.var_mean(xf, dim=[0, *range(2, x.dim())], correction=0)  # (C,), (C,)
        first.copy_(mean)
        second.copy_(var)
        return
    xv = x.reshape(n, c, -1)  # (N, C, L): a view when x is contiguous
    torch.sum(xv.sum(2, dtype=torch.float32), 0, out=first)  # (N, C) -> (C,)
    torch.sum(torch.linalg.vector_norm(xv, dim=2, dtype=torch.float32).square(), 0, out=second)


def derive(raw: np.ndarray, plan: Plan, central: bool) -> tuple[np.ndarray, np.ndarray]:
    """Host side, float64: staging rows (R, size) -> the catalog's values (R, M) and whether each was measured
    in that step (R, M)."""
    r = raw.shape[0]
    sites = plan.sites
    chans = np.array([s.channels for s in sites], dtype=np.int64)
    counts = raw[:, [s.offset + 2 * s.channels for s in sites]]  # (R, S) elements per channel, -1 if unwritten
    owner = np.repeat(np.arange(len(sites)), chans)  # (Ctot,) site of each channel column
    starts = np.concatenate([[0], np.cumsum(chans)[:-1]]).astype(np.int64)
    first_cols = np.concatenate([np.arange(s.offset, s.offset + s.channels) for s in sites] or [np.zeros(0, int)])
    a = raw[:, first_cols]  # (R, Ctot)
    b = raw[:, first_cols + np.repeat(chans, chans)]
    n = counts[:, owner]  # (R, Ctot) elements per channel
    with np.errstate(divide="ignore", invalid="ignore"):
        if central:
            mean, var = a, b
        else:
            mean = a / n
            var = np.maximum(b / n - mean**2, 0.0)
        if len(sites):
            per_site = lambda v: np.add.reduceat(v, starts, axis=1) / chans  # noqa: E731  (R, Ctot) -> (R, S)
            big_mean = per_site(mean)
            csm = per_site(mean**2)
            cvar = per_site(var)
            pooled_var = cvar + per_site((mean - big_mean[:, owner]) ** 2)  # biased, over N*C*H*W
            total = counts * chans  # (R, S)
            std = np.sqrt(pooled_var * total / (total - 1))
            norm = np.sqrt(total * (pooled_var + big_mean**2))
            chstd = np.sqrt(var * n / (n - 1))
        else:
            std = norm = csm = cvar = np.zeros((r, 0))
            chstd = np.zeros((r, 0))
    site_ok = counts > 0
    cat = plan.rows
    values = np.empty((r, len(cat.metric)))
    valid = np.empty((r, len(cat.metric)), dtype=bool)
    src, ia, ib = cat.source, cat.a, cat.b
    for name, table in (("std", std), ("csm", csm), ("cvar", cvar)):
        sel = src == name
        values[:, sel] = table[:, ia[sel]]
        valid[:, sel] = site_ok[:, ia[sel]]
    sel = src == "ratio"
    with np.errstate(divide="ignore", invalid="ignore"):
        values[:, sel] = norm[:, ia[sel]] / norm[:, ib[sel]]
    valid[:, sel] = site_ok[:, ia[sel]] & site_ok[:, ib[sel]]
    sel = src == "chstd"
    values[:, sel] = chstd[:, starts[ia[sel]] + ib[sel]]
    valid[:, sel] = site_ok[:, ia[sel]]
    sel = src == "scalar"
    values[:, sel] = raw[:, ia[sel]]
    valid[:, sel] = raw[:, ia[sel]] != _SENTINEL
    return values, valid


# -------------------------------------------------------------------------------------------- Recorder
def _check_int(name: str, value, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1, e.g. {example}")
    return int(value)


def _dynamo():
    """torch._dynamo if something imported it, else None: then nothing is compiled (importing it takes seconds)."""
    return sys.modules.get("torch._dynamo")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose submodules get the hooks: inside torch.compile's and DataParallel's wrappers."""
    while True:
        dynamo = _dynamo()
        if dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _default_run_info(root: nn.Module) -> dict:
    spec = getattr(root, "spec", None)
    if isinstance(spec, ModelSpec):
        return dict(run_id="", arch=spec.arch, depth=spec.depth, norm=spec.norm, shortcut=spec.shortcut, seed=-1)
    return dict(run_id="", arch=type(root).__name__, depth=-1, norm="unknown", shortcut="unknown", seed=-1)


def _categorical(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
    cat = pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))
    return cat.remove_unused_categories()


@dataclass
class _Chunk:
    steps: np.ndarray  # (R,)
    epochs: np.ndarray  # (R,)
    values: np.ndarray  # (R, M)
    valid: np.ndarray  # (R, M)


class Recorder:
    """Record per-layer statistics of `model` every `every` steps; see the module docstring for the rows.

    metrics: None for all of DEFAULT_METRICS, or a list of names from METRICS. per_channel adds
    response_channel_std rows and a `channel` column. run_info: run_id, arch, depth, norm, shortcut, seed
    (defaults from model.spec for resviz models). flush_every: recorded steps kept on the device per host copy.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 20,
        metrics=None,
        per_channel: bool = False,
        run_info: dict | None = None,
        flush_every: int = 64,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Recorder needs a torch.nn.Module, got {type(model).__name__}")
        self._every = _check_int("every", every, "every=20 records steps 0, 20, 40, ...")
        self._flush_every = _check_int("flush_every", flush_every, "flush_every=64")
        chosen = list(DEFAULT_METRICS) if metrics is None else [metrics] if isinstance(metrics, str) else list(metrics)
        bad = [m for m in chosen if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; valid: {', '.join(METRICS)}")
        if per_channel:
            chosen.append("response_channel_std")
        self._metrics = frozenset(chosen)
        self._per_channel = "response_channel_std" in self._metrics
        self._model = model
        self._root = _unwrap(model)
        info = _default_run_info(self._root)
        for key, value in (run_info or {}).items():
            if key not in RUN_INFO_KEYS:
                raise ValueError(f"run_info key {key!r} is unknown; valid: {', '.join(RUN_INFO_KEYS)}")
            kind = RUN_INFO_KEYS[key]
            if kind is int and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ValueError(f"run_info[{key!r}]={value!r} must be an int")
            info[key] = kind(value)
        self._info = info
        self._plan = build_plan(self._root, self._metrics)
        self._central = False
        self._step = 0
        self._recording = True
        self._active = False
        self._handles: list = []
        self._chunks: list[_Chunk] = []
        self._pending: list = []
        self._rows = 0
        self._seen: dict[int, tuple] = {}  # eager only: id(tensor) -> (weakref, version, site) this step
        self._refs: dict[int, weakref.ref] = {}
        self._stage = self._buf = self._minus_one = None
        self._param_objects: list[nn.Parameter] = []
        self._scale_objects: list[nn.Parameter] = []
        n = self._flush_every
        self._row_steps = np.zeros(n, dtype=np.int64)
        self._row_epochs = np.full(n, np.nan)

    # ---- public state
    @property
    def recording(self) -> bool:
        """Whether the current step is a recording step (forward hooks compute statistics)."""
        return self._recording

    @property
    def current_step(self) -> int:
        return self._step

    @property
    def every(self) -> int:
        return self._every

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for m in METRICS if m in self._metrics)

    # ---- lifecycle
    def __enter__(self) -> Recorder:
        if self._active:
            raise RuntimeError("this Recorder is already active: enter it once at a time, not inside its own `with`")
        modules = dict(self._root.named_modules())
        targets = {h.module for h in self._plan.hooks}
        for name in sorted(targets):
            other = _ACTIVE.get(modules[name])
            if other is not None:
                raise RuntimeError(
                    f"'{name or type(self._root).__name__}' is already recorded by another active Recorder; "
                    "leave that Recorder's `with` block first (two Recorders on one model would double its hooks)"
                )
        device = next((t.device for t in [*self._root.parameters(), *self._root.buffers()]), torch.device("cpu"))
        self._central = device.type == "cuda"
        self._stage = torch.full((self._plan.size,), _SENTINEL, device=device)  # (K,) this step's numbers
        self._buf = torch.empty((self._flush_every, self._plan.size), device=device)  # (rows, K)
        self._minus_one = torch.full((), _SENTINEL, device=device)
        named = dict(self._root.named_parameters())
        self._param_objects = [named[name] for name, _ in self._plan.params]
        self._scale_objects = [named[name] for name, _ in self._plan.scales]
        self._active = True
        self._recording = self._step % self._every == 0
        try:
            for spec in self._plan.hooks:
                module = modules[spec.module]
                hook = self._make_hook(spec)
                if spec.kind in ("pre", "sum_pre"):
                    self._handles.append(module.register_forward_pre_hook(hook))
                else:
                    self._handles.append(module.register_forward_hook(hook))
                _ACTIVE[module] = self
            self._reset_compiled()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def close(self) -> None:
        """Remove every hook (idempotent), then move the recorded rows to the host."""
        try:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for module, owner in list(_ACTIVE.items()):
                if owner is self:
                    del _ACTIVE[module]
        finally:
            was_active, self._active = self._active, False
            self._clear_step()
            self._recording = False  # a stale compiled copy of a hook, if any, takes its no-op path
            if was_active:
                try:
                    self._reset_compiled()
                    self._flush_async()
                    self._collect(wait=True)
                finally:
                    self._stage = self._buf = self._minus_one = None
                    self._param_objects = self._scale_objects = []

    def _reset_compiled(self) -> None:
        """Drop dynamo's compiled code for the model's forward methods: hooks added or removed after compiling
        are otherwise ignored (pytorch#117758). Done whether or not this Recorder was given the compiled
        wrapper (a loop may compile the model and record the module inside); other compiled instances of the
        same classes recompile once."""
        dynamo = _dynamo()
        if dynamo is None:
            return
        codes = {getattr(type(m).forward, "__code__", None) for m in self._root.modules()}
        for code in codes - {None}:
            dynamo.reset_code(code)

    # ---- steps
    def begin_step(self, step: int) -> None:
        """Set the current step (e.g. when resuming at step > 0); forward hooks record if step % every == 0."""
        self._require_active()
        self._step = self._check_step(step)
        self._clear_step()
        self._recording = self._step % self._every == 0

    def end_step(self, step: int | None = None, epoch: float | None = None) -> None:
        """Finish `step` (default: the current one). On recording steps read p.grad (one foreach_norm) and
        queue the step's statistics on the device; no host synchronisation. The next step is step + 1."""
        self._require_active()
        step = self._step if step is None else self._check_step(step)
        if step % self._every == 0:
            self._commit(step, math.nan if epoch is None else float(epoch))
        else:
            self._clear_step()
        self._step = step + 1
        self._recording = self._step % self._every == 0

    def step(self, epoch: float | None = None) -> None:
        """end_step(current step)."""
        self.end_step(None, epoch)

    @contextlib.contextmanager
    def paused(self):
        """Forward passes inside this block (e.g. a test-set evaluation mid-training) are not recorded."""
        was = self._recording
        self._recording = False
        try:
            yield self
        finally:
            self._recording = was

    # ---- results
    def flush(self) -> None:
        """Copy the recorded rows to the host (the one device-to-host copy) and wait for them."""
        self._flush_async()
        self._collect(wait=True)

    def frame(self) -> pd.DataFrame:
        """The tidy table of everything recorded and not yet drained (schema.STATS_COLUMNS, canonical dtypes)."""
        self.flush()
        return self._table(self._chunks)

    def drain(self) -> pd.DataFrame:
        """The rows recorded since the last drain, then forget them (keeps host memory bounded)."""
        self.flush()
        chunks, self._chunks = self._chunks, []
        return self._table(chunks)

    # ---- internals: hooks
    def _require_active(self) -> None:
        if not self._active:
            raise RuntimeError("the Recorder is not active: use it as `with Recorder(model) as rec:`")

    @staticmethod
    def _check_step(step) -> int:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step={step!r} must be an integer >= 0 (the optimiser steps taken so far)")
        return int(step)

    def _clear_step(self) -> None:
        """Forget what hooks wrote since the last commit (they only write while `recording`)."""
        if self._recording and self._stage is not None:
            self._stage.fill_(_SENTINEL)
        self._seen.clear()
        self._refs.clear()

    def _write(self, index: int, x: torch.Tensor) -> None:
        """Reduce x (N, C, *) into site `index`'s slots of the staging vector."""
        site = self._plan.sites[index]
        c, o = site.channels, site.offset
        if x.dim() < 2 or x.shape[1] != c:
            raise ValueError(f"Recorder expected (N, {c}, ...) at '{site.name}', got shape {tuple(x.shape)}")
        with torch.no_grad():
            eager = not torch.compiler.is_compiling()
            if eager and not x.is_inference():
                hit = self._seen.get(id(x))
                if hit is not None and hit[0]() is x and hit[1] == x._version:  # the same tensor, unchanged
                    src = self._plan.sites[hit[2]].offset
                    self._stage[o : o + 2 * c + 1].copy_(self._stage[src : src + 2 * c + 1])
                    return
                self._seen[id(x)] = (weakref.ref(x), x._version, index)
            write_moments(x.detach(), self._stage[o : o + c], self._stage[o + c : o + 2 * c], self._central)
            self._stage[o + 2 * c : o + 2 * c + 1].fill_(x.numel() // c)
            if eager and index in self._plan.keep_ref:
                self._refs[index] = weakref.ref(x)

    def _make_hook(self, spec: HookSpec):
        if spec.kind == "fwd":

            def hook(module, args, output):
                if self._recording:
                    self._write(spec.site, output)

        elif spec.kind == "pre":

            def hook(module, args):
                if self._recording:
                    self._write(spec.site, args[0])

        elif spec.kind == "sum_pre":

            def hook(module, args):
                if self._recording:
                    ref = self._refs.get(spec.ref)
                    if ref is not None and ref() is args[0]:  # the block's branch tensor, now holding the sum
                        self._refs[spec.ref] = None
                        self._write(spec.site, args[0])

        else:
            grad_hook = self._make_grad_hook(spec.grad) if spec.grad >= 0 else None

            def hook(module, args, output):
                if self._recording:
                    if spec.site >= 0:
                        self._write(spec.site, output)
                    if grad_hook is not None and output.requires_grad:
                        output.register_hook(grad_hook)

        return hook

    def _make_grad_hook(self, offset: int):
        def grad_hook(grad: torch.Tensor) -> None:
            if not torch.compiler.is_compiling() and not self._active:
                return
            with torch.no_grad():
                self._stage[offset : offset + 1].copy_(torch.linalg.vector_norm(grad, dtype=torch.float32))

        return grad_hook

    # ---- internals: steps and flushes
    def _commit(self, step: int, epoch: float) -> None:
        plan, stage = self._plan, self._stage
        with torch.no_grad():
            if plan.params:
                grads = [p.grad for p in self._param_objects]
                present = [g for g in grads if g is not None]
                if present:
                    norms = iter(torch._foreach_norm(present, 2, dtype=torch.float32))
                    parts = [next(norms) if g is not None else self._minus_one for g in grads]
                    first = plan.params[0][1]
                    torch.stack(parts, out=stage[first : first + len(parts)])
            if plan.scales:
                first = plan.scales[0][1]
                scales = [p.detach().float().reshape(()) for p in self._scale_objects]
                torch.stack(scales, out=stage[first : first + len(scales)])
            self._buf[self._rows].copy_(stage)
            stage.fill_(_SENTINEL)
        self._row_steps[self._rows] = step
        self._row_epochs[self._rows] = epoch
        self._seen.clear()
        self._refs.clear()
        self._rows += 1
        if self._rows == self._flush_every:
            self._flush_async()

    def _flush_async(self) -> None:
        """Start the device-to-host copy of the buffered rows; on CUDA non-blocking into pinned memory."""
        self._collect(wait=False)
        rows = self._rows
        if rows == 0 or self._buf is None:
            return
        meta = (self._row_steps[:rows].copy(), self._row_epochs[:rows].copy())
        if self._buf.device.type == "cuda":
            host = torch.empty((rows, self._plan.size), pin_memory=True)
            host.copy_(self._buf[:rows], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event, meta))
        else:
            self._pending.append((self._buf[:rows].cpu().numpy().astype(np.float64), None, meta))  # other devices: sync
        self._rows = 0

    def _collect(self, wait: bool) -> None:
        while self._pending:
            host, event, (steps, epochs) = self._pending[0]
            if event is not None:
                if not event.query():  # the copy is still in flight
                    if not wait:
                        return
                    event.synchronize()
                host = host.numpy().astype(np.float64)
            self._pending.pop(0)
            values, valid = derive(host, self._plan, self._central)
            self._chunks.append(_Chunk(steps, epochs, values, valid))

    def _table(self, chunks: list[_Chunk]) -> pd.DataFrame:
        if not chunks:
            return schema.empty(self._per_channel)
        valid = np.concatenate([c.valid for c in chunks])
        r, m = np.nonzero(valid)  # ordered by step, then catalog order
        if not len(r):
            return schema.empty(self._per_channel)
        steps = np.concatenate([c.steps for c in chunks])
        epochs = np.concatenate([c.epochs for c in chunks])
        values = np.concatenate([c.values for c in chunks])
        cat, info, n = self._plan.rows, self._info, len(r)
        zeros = np.zeros(n, dtype=np.int8)
        columns = {}
        for key in ("run_id", "arch", "norm", "shortcut"):
            columns[key] = _categorical(zeros, [info[key]])
        columns["depth"] = np.full(n, info["depth"], dtype=np.int64)
        columns["seed"] = np.full(n, info["seed"], dtype=np.int64)
        columns["step"] = steps[r]
        columns["epoch"] = epochs[r]
        for key in ("layer", "metric"):
            codes, names = cat.codes(key)
            columns[key] = _categorical(codes[m], names)
        for key in ("layer_index", "stage", "block"):
            columns[key] = getattr(cat, key)[m]
        columns["value"] = values[r, m]
        if self._per_channel:
            columns["channel"] = cat.channel[m]
        order = list(schema.STATS_COLUMNS) + (["channel"] if self._per_channel else [])
        return schema.validate(pd.DataFrame({k: columns[k] for k in order}))


__all__ = ["DEFAULT_METRICS", "METRICS", "Recorder", "build_plan", "derive", "write_moments"]
