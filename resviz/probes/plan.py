"""The plan: which tensors of a model the Recorder observes, where their numbers sit, and which rows follow.

`build_plan(model, metrics)` walks the model once: norm layers (layer-level metrics), residual blocks found
through the block-spec registry (`blocks.py`; block-level metrics, rows declared in `BLOCK_ROWS`), and
parameters (param-level metrics). Each observed tensor is a `Site` with slots in one staging vector; each hook
a `HookSpec`; each table row a catalog entry saying how `reductions.derive` computes its value.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from resviz import schema
from resviz.probes.blocks import (
    BlockSpec,
    Point,
    block_channels,
    find_blocks,
    features_last,
    norm_channels,
    norm_layers,
    param_kind,
    skip_signal,
    unknown_block_message,
)

LAYER_METRICS = schema.metrics_at("layer")
BLOCK_METRICS = frozenset(schema.metrics_at("block"))
PARAM_METRICS = schema.metrics_at("param")
_STAGE_BLOCK = re.compile(r"^layer(\d+)\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class BlockRow:
    """A row per block (per residual addition for branch/skip/sum): `metric` at `point` ("" = the block), from
    the sites of `reads` ("grad": the block output's gradient-norm slot), computed as `source` (see Catalog)."""

    metric: str
    point: str
    source: str
    reads: tuple[str, ...]


# The Recorder's block rows, in the order the table lists them within a block.
BLOCK_ROWS: tuple[BlockRow, ...] = (
    BlockRow("branch_std", "branch", "std", ("branch",)),
    BlockRow("skip_std", "skip", "std", ("skip",)),
    BlockRow("sum_std", "sum", "std", ("sum",)),
    BlockRow("branch_ratio", "", "ratio", ("branch", "skip")),
    BlockRow("channel_sq_mean", "out", "csm", ("out",)),
    BlockRow("channel_var", "branch", "cvar", ("branch",)),
    BlockRow("channel_var", "out", "cvar", ("out",)),
    BlockRow("act_grad_norm", "out", "scalar", ("grad",)),
)
ADD_POINTS = ("branch", "skip", "sum")  # per residual addition; "out" and "grad" are per block


def moment_rows(points: tuple[str, ...]) -> tuple[BlockRow, ...]:
    """channel_sq_mean and channel_var at each of `points` ("branch", "skip", "sum", "out"), in that order."""
    return tuple(
        BlockRow(metric, p, source, (p,))
        for p in (*ADD_POINTS, "out") if p in points
        for metric, source in (("channel_sq_mean", "csm"), ("channel_var", "cvar"))
    )


@dataclass(frozen=True)
class Site:
    """A tensor observed in a hook. Its slots in the staging vector, from `offset`: C first moments, C second
    moments, then the number of elements per channel (the sentinel -1 until written in this step). `signal`:
    the channels [lo, hi) that carry signal (an option-A skip's zero padding left out; None = all): the site's
    std and norm (so skip_std and branch_ratio) are taken over them, its channel moments over all channels."""

    name: str
    channels: int
    offset: int
    last: bool = False  # features on the last dim ((B, T, C) tokens, NHWC), else dim 1 ((N, C, *))
    signal: tuple[int, int] | None = None

    @property
    def signal_range(self) -> tuple[int, int]:
        return self.signal if self.signal is not None else (0, self.channels)


@dataclass(frozen=True)
class HookSpec:
    """One hook: `kind` is "fwd" (module output), "pre" (module input), "sum_pre" (input, only when it is the
    tensor last seen at site `ref`), or "out" (output, moments if site >= 0, plus a gradient hook if grad >= 0)."""

    module: str
    kind: str
    site: int
    grad: int = -1  # staging offset of the act_grad_norm slot
    ref: int = -1
    arg: int = 0  # "pre", "sum_pre": which positional input, or
    kwarg: str = ""  # the keyword it is passed by


@dataclass(frozen=True)
class Catalog:
    """The table rows one recorded step can give, as parallel arrays (M,). `source` says how a value is derived:
    "std" / "csm" / "cvar" of site a, "ratio" of the norms of sites a and b, "chstd" of channel b of site a,
    "scalar" at staging offset a. A "ratio" takes both norms over site b's signal channels. `kind`: the
    param_kind of parameter rows, "" for the others."""

    metric: np.ndarray  # str
    layer: np.ndarray  # str
    layer_index: np.ndarray  # int64
    stage: np.ndarray
    block: np.ndarray
    channel: np.ndarray
    source: np.ndarray  # str
    a: np.ndarray
    b: np.ndarray
    kind: np.ndarray  # str

    @staticmethod
    def of(rows: list[tuple]) -> Catalog:
        columns = list(zip(*rows)) if rows else [()] * 10
        kinds = [object, object, np.int64, np.int64, np.int64, np.int64, object, np.int64, np.int64, object]
        return Catalog(*(np.array(c, dtype=k) for c, k in zip(columns, kinds)))

    def codes(self, key: str) -> tuple[np.ndarray, list[str]]:
        """Category codes into the sorted unique values of a string field."""
        names, codes = np.unique(getattr(self, key).astype(str), return_inverse=True)
        return codes.astype(np.int32), [str(n) for n in names]


@dataclass(frozen=True)
class Plan:
    sites: tuple[Site, ...]
    hooks: tuple[HookSpec, ...]
    params: tuple[tuple[str, int], ...]  # (parameter name, staging offset) for grad_norm, consecutive slots
    rel_params: tuple[tuple[str, int], ...]  # (weight name, staging offset) for grad_rel_norm, consecutive slots
    scales: tuple[tuple[str, int], ...]  # (parameter name, staging offset) for branch_scale
    size: int  # length of the staging vector
    rows: Catalog
    keep_ref: frozenset[int]  # sites whose last tensor a "sum_pre" hook compares against


@dataclass
class _Builder:
    """The plan while it is built: sites and slots are appended, hooks on one module output share a site."""

    position: Callable[[str], tuple[int, int]]  # module name -> (stage, block)
    sites: list[Site] = field(default_factory=list)
    hooks: list[HookSpec] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)  # (metric, layer, layer_index, stage, block, channel, source, a, b,
    #                                                     param_kind)
    params: list[tuple[str, int]] = field(default_factory=list)
    rel_params: list[tuple[str, int]] = field(default_factory=list)
    scales: list[tuple[str, int]] = field(default_factory=list)
    keep_ref: set[int] = field(default_factory=set)
    observed: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (module, hook kind, arg) -> site
    size: int = 0

    def add_site(self, name: str, channels: int, last: bool = False, signal: tuple[int, int] | None = None) -> int:
        self.sites.append(Site(name, channels, self.size, last, signal))
        self.size += 2 * channels + 1
        return len(self.sites) - 1

    def add_slot(self) -> int:
        self.size += 1
        return self.size - 1

    def observe(self, module: str, kind: str, name: str, channels: int, ref: int = -1, *, last: bool = False,
                arg: int = 0, kwarg: str = "", signal: tuple[int, int] | None = None) -> int:
        """The site of `module`'s output ("fwd") or input `arg` ("pre", "sum_pre"), hooked once."""
        key = (module, kind, arg)
        if key not in self.observed:
            site = self.add_site(name, channels, last, signal)
            self.hooks.append(HookSpec(module, kind, site, ref=ref, arg=arg, kwarg=kwarg))
            self.observed[key] = site
        return self.observed[key]

    def plan(self) -> Plan:
        return Plan(
            tuple(self.sites), tuple(self.hooks), tuple(self.params), tuple(self.rel_params), tuple(self.scales),
            self.size,
            Catalog.of(self.rows), frozenset(self.keep_ref),
        )


def _positions(root: nn.Module, blocks: list[tuple[str, BlockSpec, nn.Module]]):
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


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _plan_norms(b: _Builder, root: nn.Module, norms: list[tuple[str, nn.Module]], metrics: frozenset[str]) -> None:
    """response_std (and per channel response_channel_std) at every norm layer; layer_index counts them all."""
    if not metrics & set(LAYER_METRICS):
        return
    for index, (name, module) in enumerate(norms):
        s = b.observe(name, "fwd", name, norm_channels(root, name, module), last=features_last(module))
        where = (index, *b.position(name))
        if "response_std" in metrics:
            b.rows.append(("response_std", name, *where, -1, "std", s, 0, ""))
        if "response_channel_std" in metrics:
            b.rows.extend(("response_channel_std", name, *where, c, "chstd", s, c, "")
                          for c in range(b.sites[s].channels))


def _observe_point(b: _Builder, bname: str, point: Point, name: str, channels: int, ref: int, last: bool,
                   signal: tuple[int, int] | None = None) -> int:
    module = _join(bname, point.module)
    kind = "sum_pre" if point.holds_sum else "pre" if point.input else "fwd"
    if point.holds_sum:
        b.keep_ref.add(ref)
    return b.observe(module, kind, name, channels, ref, last=last, arg=point.arg, kwarg=point.kwarg, signal=signal)


def _plan_add_points(b, bname, spec, block, add, wanted: set[str], channels: int) -> dict[str, int]:
    """Sites of one residual addition's branch, skip and sum points that some wanted row reads."""
    found = {p: spec.find(block, getattr(add, p)) for p in ADD_POINTS}
    for p in ADD_POINTS:  # the branch when read; with register_block's specs, every point given
        if found[p] is None and ((p == "branch" and "branch" in wanted) or (spec.strict and getattr(add, p))):
            names = ", ".join(repr(str(q)) for q in getattr(add, p))
            has = ", ".join(name for name, _ in block.named_children()) or "none"
            hint = " (a list gives fallbacks: skip=['downsample', ':in'])" if p == "skip" else ""
            raise ValueError(f"block '{bname}' ({spec.family}) has none of the {p} points {names} (its submodules: "
                             f"{has}): name a submodule it has in resviz.register_block(..., {p}=...){hint}")
    if found["sum"] is not None and found["sum"].holds_sum and "sum" in wanted:
        wanted = wanted | {"branch"}  # the sum is recognised as the branch tensor, updated in place
    sites: dict[str, int] = {}
    signal = skip_signal(block, channels)
    for p in ADD_POINTS:
        if p in wanted and found[p] is not None:
            ref = sites.get("branch", -1)
            sig = signal if p == "skip" and signal != (0, channels) else None
            sites[p] = _observe_point(b, bname, found[p], f"{bname}{add.name}.probe_{p}", channels, ref, spec.tokens,
                                      sig)
    return sites


def _plan_block(b: _Builder, k: int, bname: str, spec: BlockSpec, block: nn.Module, rows: list[BlockRow]) -> int:
    """The sites, hooks and rows of the block whose first residual addition is the k-th of the network (rows:
    the block rows whose metric is recorded); returns k + its number of additions. layer_index is the
    addition's position along the network (the block's last addition for rows at the block's output)."""
    wanted = {p for row in rows for p in row.reads}
    channels = block_channels(bname, spec, block)
    per_add = [_plan_add_points(b, bname, spec, block, add, wanted, channels) for add in spec.adds]
    out_point = spec.find(block, spec.out)
    block_sites: dict[str, int] = {}
    if out_point is not None and wanted & {"out", "grad"}:
        if "grad" in wanted:
            block_sites["grad"] = b.add_slot()
        site = b.add_site(f"{bname}.probe_out", channels, spec.tokens) if "out" in wanted else -1
        if site >= 0:
            block_sites["out"] = site
        b.hooks.append(HookSpec(_join(bname, out_point.module), "out", site, grad=block_sites.get("grad", -1)))
    last = k + len(spec.adds) - 1
    for row in rows:
        per_block = not set(row.reads) & set(ADD_POINTS)
        targets = [("", last, block_sites)] if per_block else [
            (a.name, k + i, sites) for i, (a, sites) in enumerate(zip(spec.adds, per_add))]
        for add, index, sites in targets:
            if all(p in sites for p in row.reads):
                layer = _join(bname + add, f"probe_{row.point}" if row.point else "")
                second = sites[row.reads[1]] if len(row.reads) > 1 else 0
                b.rows.append((row.metric, layer, index, *b.position(bname), -1, row.source, sites[row.reads[0]],
                               second, ""))
    return last + 1


def param_kinds(root: nn.Module) -> dict[str, str]:
    """Parameter name -> its kind (blocks.param_kind), for every parameter of the model, in named_parameters order."""
    modules = dict(root.named_modules())
    kinds = {}
    for name, p in root.named_parameters():
        owner, _, leaf = name.rpartition(".")
        kinds[name] = param_kind(modules[owner], leaf, p)
    return kinds


def _plan_params(b: _Builder, root: nn.Module, blocks, metrics: frozenset[str]) -> None:
    """grad_norm per parameter, grad_rel_norm per weight tensor (layer_index: the parameter's index, as for
    grad_norm), branch_scale per block that has one: scalar slots filled at end_step."""
    kinds = param_kinds(root)
    for metric, store in (("grad_norm", b.params), ("grad_rel_norm", b.rel_params)):
        if metric not in metrics:
            continue
        for index, (name, kind) in enumerate(kinds.items()):
            if metric == "grad_rel_norm" and kind != "weight":
                continue
            store.append((name, b.add_slot()))
            b.rows.append((metric, name, index, *b.position(name.rpartition(".")[0]), -1, "scalar", b.size - 1, 0,
                           kind))
    if "branch_scale" in metrics:
        for k, (bname, _, block) in enumerate(blocks):
            if isinstance(getattr(block, "branch_scale", None), nn.Parameter):
                b.scales.append((f"{bname}.branch_scale", b.add_slot()))
                b.rows.append(("branch_scale", f"{bname}.branch_scale", k, *b.position(bname), -1, "scalar",
                               b.size - 1, 0, kinds.get(f"{bname}.branch_scale", "other")))


def build_plan(root: nn.Module, metrics: frozenset[str], block_rows: tuple[BlockRow, ...] = BLOCK_ROWS) -> Plan:
    """Decide which tensors to observe, where they sit in the staging vector, and which table rows follow."""
    blocks, unknown = find_blocks(root)
    if unknown and metrics & BLOCK_METRICS:
        raise ValueError(unknown_block_message(*unknown[0]))
    norms = norm_layers(root)
    if metrics & (BLOCK_METRICS | set(LAYER_METRICS)) and not norms and not blocks:
        raise ValueError(
            f"found no norm layers and no residual blocks in {type(root).__name__}: the Recorder observes "
            "norm layers (BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm) and residual blocks (resviz, "
            "torchvision, timm, Hugging Face, or any class given to resviz.register_block); for gradients only "
            "use metrics=['grad_norm']"
        )
    b = _Builder(_positions(root, blocks))
    _plan_norms(b, root, norms, metrics)
    rows = [row for row in block_rows if row.metric in metrics]
    k = 0
    for bname, spec, block in blocks:
        k = _plan_block(b, k, bname, spec, block, rows)
    _plan_params(b, root, blocks, metrics)
    return b.plan()
