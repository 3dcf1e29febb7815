"""The Recorder: hooks that live inside a `with` block, on-device staging, one host copy per flush, the table.

Lifecycle: `__enter__` registers the plan's hooks (and refuses a second Recorder on the same modules);
forward hooks reduce each observed tensor at once into the staging vector (`reductions.write_moments`);
`end_step` adds the gradient norms (one `torch._foreach_norm`) and copies the vector into a device ring buffer
of `flush_every` rows; a flush copies the buffer to the host (non-blocking into pinned memory on CUDA) and
`reductions.derive` turns it into values; `frame()` / `drain()` build the tidy table of schema.py;
`close()` removes every hook in `finally`. What is recorded where is the plan's business (`plan.py`).
"""
from __future__ import annotations

import contextlib
import math
import sys
import warnings
import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz import schema
from resviz.models import model_identity, unwrap
from resviz.probes.blocks import find_blocks
from resviz.probes import distributed
from resviz.probes.distributed import local
from resviz.probes.plan import BLOCK_ROWS, BlockRow, HookSpec, build_plan
from resviz.probes.reductions import SENTINEL, derive, write_moments
from resviz.schema import RUN_INFO_KEYS  # the one list of run-metadata keys (from schema.RUN_COLUMNS)

METRICS: tuple[str, ...] = schema.RECORDER_METRICS  # what a Recorder can take (not the evaluation metrics)
DEFAULT_METRICS: tuple[str, ...] = schema.DEFAULT_METRICS
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hooked module -> its Recorder


def _check_int(name: str, value, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1, e.g. {example}")
    return int(value)


def _dynamo():
    """torch._dynamo if something imported it, else None: then nothing is compiled (importing it takes seconds)."""
    return sys.modules.get("torch._dynamo")


def _chosen_metrics(metrics, per_channel: bool) -> frozenset[str]:
    chosen = list(DEFAULT_METRICS) if metrics is None else [metrics] if isinstance(metrics, str) else list(metrics)
    bad = [m for m in chosen if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; valid: {', '.join(METRICS)}")
    if per_channel:
        chosen.append("response_channel_std")
    return frozenset(chosen)


_INFO_KEYS = {**RUN_INFO_KEYS, **dict.fromkeys(schema.MODEL_COLUMNS, str)}  # what run_info may set


def _run_info(root: nn.Module, given: dict) -> dict:
    """The run metadata of every row: from model.spec for resviz models, then `given` checked and applied."""
    identity = model_identity(root)
    info = {"run_id": "", **{k: identity[k] for k in RUN_INFO_KEYS if k in identity}, "seed": -1,
            **{k: identity[k] for k in schema.MODEL_COLUMNS}}
    for key, value in given.items():
        if key not in _INFO_KEYS:
            raise ValueError(f"run_info key {key!r} is unknown; valid: {', '.join(_INFO_KEYS)}")
        kind = _INFO_KEYS[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"run_info[{key!r}]={value!r} must be an int")
        info[key] = kind(value)
    return info


def _argument(spec: HookSpec, args: tuple, kwargs: dict):
    """The input a pre-hook observes: positional argument `spec.arg`, else keyword `spec.kwarg` (Hugging Face
    layers may be called either way), else the first tensor passed by keyword."""
    if len(args) > spec.arg:
        return args[spec.arg]
    if spec.kwarg in kwargs:
        return kwargs[spec.kwarg]
    found = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    if spec.arg == 0 and found:
        return found[0]
    raise ValueError(f"Recorder found no input {spec.arg} ({spec.kwarg or 'positional'}) of '{spec.module}': "
                     "register the block with a point that is a tensor")


def _categorical(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
    cat = pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))
    return cat.remove_unused_categories()


def _watched_points(plan, root: nn.Module) -> list[tuple[str, str, str, str, int, np.ndarray]]:
    """(block, its class, "branch" or "skip", the point as register_block spells it, the point's count slot, the
    count slots of the block's other sites) for every branch and skip point: a point whose hook never runs
    while the rest of its block does is reported (`_report_silent_points`), not dropped without a word."""
    classes = {name: type(m).__name__ for name, _, m in find_blocks(root)[0]}
    hooks = {h.site: h for h in plan.hooks}
    slot = [site.offset + 2 * site.channels for site in plan.sites]  # elements per channel: SENTINEL if unwritten
    members: dict[str, list[int]] = {}  # block -> its sites (points and norm layers inside it)
    for i, site in enumerate(plan.sites):
        parts = site.name.split(".")
        owner = next((".".join(parts[:k]) for k in range(len(parts) - 1, -1, -1) if ".".join(parts[:k]) in classes),
                     None)
        if owner is not None:
            members.setdefault(owner, []).append(i)
    found = []
    for block, sites in members.items():
        prefix = block + "." if block else ""
        for i in sites:
            role, hook = plan.sites[i].name.rpartition(".probe_")[2], hooks.get(i)
            if role not in ("branch", "skip") or hook is None or len(sites) < 2:
                continue
            point = hook.module.removeprefix(prefix) if hook.module != block else ""
            if hook.kind != "fwd":
                point += ":in" if hook.arg == 0 else f":in{hook.arg}"
            found.append((block, classes[block], role, point, slot[i], np.array([slot[j] for j in sites if j != i])))
    return found


@dataclass
class _Chunk:
    steps: np.ndarray  # (R,)
    epochs: np.ndarray  # (R,)
    values: np.ndarray  # (R, M)
    valid: np.ndarray  # (R, M)


class Recorder:
    """Record per-layer statistics of `model` every `every` steps; see `resviz.probes` for the rows.

    metrics: None for all of DEFAULT_METRICS, or a list of names from METRICS. per_channel adds
    response_channel_std rows and a `channel` column. run_info: run_id, arch, depth, norm, shortcut, seed
    (defaults from model.spec for resviz models). flush_every: recorded steps kept on the device per host copy.
    block_rows: which rows a block gives (default plan.BLOCK_ROWS; an analysis may ask for moments at other
    points with plan.moment_rows).

    Under torch.distributed (a default process group of several ranks) every rank must record: each flush sums
    the ranks' partial sums in one collective (`distributed.py`), and frame() / drain() return the global table,
    the same on every rank; write it from rank 0 (docs/distributed.md).
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 20,
        metrics=None,
        per_channel: bool = False,
        run_info: dict | None = None,
        flush_every: int = 64,
        *,
        block_rows: tuple[BlockRow, ...] = BLOCK_ROWS,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Recorder needs a torch.nn.Module, got {type(model).__name__}")
        self._every = _check_int("every", every, "every=20 records steps 0, 20, 40, ...")
        self._flush_every = _check_int("flush_every", flush_every, "flush_every=64")
        self._metrics = _chosen_metrics(metrics, per_channel)
        self._per_channel = "response_channel_std" in self._metrics
        self._model = model
        self._root = unwrap(model)
        self._info = _run_info(self._root, run_info or {})
        self._plan = build_plan(self._root, self._metrics, block_rows)
        self._central = False
        self._dist: distributed.Sync | None = None  # under torch.distributed: the ranks' one collective per flush
        self._step = 0
        self._ended = -1  # the last step end_step finished: steps must increase (each step's rows written once)
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
        self._rel_objects: list[nn.Parameter] = []
        self._rel_index = None  # positions of the grad_rel_norm weights among the grad_norm parameters
        self._scale_objects: list[nn.Parameter] = []
        n = self._flush_every
        self._row_steps = np.zeros(n, dtype=np.int64)
        self._row_epochs = np.full(n, np.nan)
        self._watched = _watched_points(self._plan, self._root)
        self._reported: set[tuple[str, str]] = set()

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

    @staticmethod
    def hooked(model: nn.Module) -> bool:
        """Whether an active Recorder has hooks on any module of `model` (inside its compile / DataParallel
        wrappers): a measurement that must not reach that Recorder's table then runs on a copy (resviz.measure)."""
        return any(m in _ACTIVE for m in unwrap(model).modules())

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
        named = dict(self._root.named_parameters())
        self._dist = distributed.connect(self._plan, self._every, self._flush_every, named)  # None: one process
        size = self._plan.size + (self._dist.extra if self._dist is not None else 0)
        self._stage = torch.full((size,), SENTINEL, device=device)  # (K,) this step's numbers
        self._buf = torch.empty((self._flush_every, size), device=device)  # (rows, K)
        self._minus_one = torch.full((), SENTINEL, device=device)
        self._param_objects = [named[name] for name, _ in self._plan.params]
        self._rel_objects = [named[name] for name, _ in self._plan.rel_params]
        if self._plan.params and self._plan.rel_params:
            position = {name: i for i, (name, _) in enumerate(self._plan.params)}
            self._rel_index = torch.tensor([position[name] for name, _ in self._plan.rel_params], device=device)
        self._scale_objects = [named[name] for name, _ in self._plan.scales]
        self._active = True
        self._recording = self._step % self._every == 0
        try:
            for spec in self._plan.hooks:
                module = modules[spec.module]
                hook = self._make_hook(spec)
                if spec.kind in ("pre", "sum_pre"):
                    self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
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
                    self._param_objects = self._rel_objects = self._scale_objects = []
                    self._rel_index = None

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
        if step <= self._ended:
            raise ValueError(f"end_step(step={step}) after step {self._ended}: steps must increase (each step's "
                             "rows are written once); use a new Recorder for a new run")
        self._ended = step
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

    def peek(self) -> pd.DataFrame:
        """The activation rows the current step's forward passes have written so far, without ending the step
        (gradient norms come at end_step). One host copy that waits for the device: for analyses outside a
        training loop, not for every step of one."""
        self._require_active()
        raw = self._stage[None].cpu().numpy().astype(np.float64)  # (1, size)
        values, valid = derive(raw, self._plan, self._central)
        return self._table([_Chunk(np.array([self._step]), np.array([math.nan]), values, valid)])

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
            self._stage.fill_(SENTINEL)
        self._seen.clear()
        self._refs.clear()

    def _write(self, index: int, x: torch.Tensor) -> None:
        """Reduce x (N, C, *), or (..., C) for a site with features last, into site `index`'s staging slots."""
        site = self._plan.sites[index]
        c, o = site.channels, site.offset
        if isinstance(x, (tuple, list)):  # Hugging Face attention and layers: (output, weights, ...)
            x = x[0]
        if x.dim() < 2 or x.shape[-1 if site.last else 1] != c:
            want = f"(..., {c})" if site.last else f"(N, {c}, ...)"
            raise ValueError(f"Recorder expected {want} at '{site.name}', got shape {tuple(x.shape)}")
        with torch.no_grad():
            eager = not torch.compiler.is_compiling()
            if eager and not x.is_inference():
                hit = self._seen.get(id(x))
                if hit is not None and hit[0]() is x and hit[1] == x._version:  # the same tensor, unchanged
                    src = self._plan.sites[hit[2]].offset
                    self._stage[o : o + 2 * c + 1].copy_(self._stage[src : src + 2 * c + 1])
                    return
                self._seen[id(x)] = (weakref.ref(x), x._version, index)
            write_moments(x.detach(), self._stage[o : o + c], self._stage[o + c : o + 2 * c], self._central, site.last)
            self._stage[o + 2 * c : o + 2 * c + 1].fill_(x.numel() // c)
            if eager and index in self._plan.keep_ref:
                self._refs[index] = weakref.ref(x)

    def _make_hook(self, spec: HookSpec):
        if spec.kind == "fwd":

            def hook(module, args, output):
                if self._recording:
                    self._write(spec.site, output)

        elif spec.kind == "pre":

            def hook(module, args, kwargs):
                if self._recording:
                    self._write(spec.site, _argument(spec, args, kwargs))

        elif spec.kind == "sum_pre":

            def hook(module, args, kwargs):
                if self._recording:
                    ref = self._refs.get(spec.ref)
                    x = _argument(spec, args, kwargs)
                    if ref is not None and ref() is x:  # the block's branch tensor, now holding the sum
                        self._refs[spec.ref] = None
                        self._write(spec.site, x)

        else:
            grad_hook = self._make_grad_hook(spec.grad) if spec.grad >= 0 else None

            def hook(module, args, output):
                if self._recording:
                    if spec.site >= 0:
                        self._write(spec.site, output)
                    out = output[0] if isinstance(output, (tuple, list)) else output
                    if grad_hook is not None and out.requires_grad:
                        out.register_hook(grad_hook)

        return hook

    def _make_grad_hook(self, offset: int):
        def grad_hook(grad: torch.Tensor) -> None:
            if not torch.compiler.is_compiling() and not self._active:
                return
            with torch.no_grad():
                self._stage[offset : offset + 1].copy_(torch.linalg.vector_norm(grad, dtype=torch.float32))

        return grad_hook

    # ---- internals: steps and flushes
    def _grad_norms(self, params: list[nn.Parameter], out: torch.Tensor) -> None:
        """||p.grad|| of each parameter into out (P,) with one foreach_norm; the sentinel where p.grad is None
        (out keeps it when no parameter has a gradient)."""
        grads = [local(p.grad) for p in params]  # an FSDP2 shard's own part: no communication
        present = [g for g in grads if g is not None]
        if present:
            norms = iter(torch._foreach_norm(present, 2, dtype=torch.float32))
            torch.stack([next(norms) if g is not None else self._minus_one for g in grads], out=out)

    def _param_metrics(self, stage: torch.Tensor) -> None:
        """grad_norm and grad_rel_norm slots: the weights' gradient norms are read from the grad_norm slots when
        both are recorded; ||W|| by one more foreach_norm."""
        plan = self._plan
        if plan.params:
            first = plan.params[0][1]
            grad_slots = stage[first : first + len(plan.params)]
            self._grad_norms(self._param_objects, grad_slots)
        if plan.rel_params:
            first = plan.rel_params[0][1]
            rel_slots = stage[first : first + len(plan.rel_params)]
            if self._rel_index is not None:
                g = grad_slots.index_select(0, self._rel_index)
            else:
                self._grad_norms(self._rel_objects, rel_slots)
                g = rel_slots.clone()
            w = torch.stack(torch._foreach_norm([local(p.detach()) for p in self._rel_objects], 2, dtype=torch.float32))
            if self._dist is not None:  # this rank's ||g|| and ||W||: the ratio is taken after the ranks' sums
                rel_slots.copy_(g)
                self._dist.weight_slots(stage).copy_(w)
            else:
                torch.where(g >= 0, g / w, self._minus_one, out=rel_slots)

    def _commit(self, step: int, epoch: float) -> None:
        plan, stage = self._plan, self._stage
        with torch.no_grad():
            self._param_metrics(stage)
            if plan.scales:
                first = plan.scales[0][1]
                scales = [local(p.detach()).float().sum() for p in self._scale_objects]  # one element (or a shard)
                torch.stack(scales, out=stage[first : first + len(scales)])
            self._buf[self._rows].copy_(stage)
            stage.fill_(SENTINEL)
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
        if self._dist is not None and self._buf is not None:  # every rank flushes here: one collective, even empty
            self._flush_global(rows)
            return
        if rows == 0 or self._buf is None:
            return
        meta = (self._row_steps[:rows].copy(), self._row_epochs[:rows].copy())
        if self._buf.device.type == "cuda":
            host = torch.empty((rows, self._plan.size), pin_memory=True)
            host.copy_(self._buf[:rows], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event, meta, self._central))
        else:  # other devices: sync
            self._pending.append((self._buf[:rows].cpu().numpy().astype(np.float64), None, meta, self._central))
        self._rows = 0

    def _flush_global(self, rows: int) -> None:
        """Under torch.distributed: the rows' host copy (waited for), then the ranks' partial sums combined by one
        collective (distributed.Sync.reduce); rows in sums form. Dropped while an exception propagates."""
        steps, epochs = self._row_steps[:rows].copy(), self._row_epochs[:rows].copy()
        raw = self._buf[:rows].cpu().numpy().astype(np.float64)
        self._rows = 0
        total = self._dist.reduce(raw, steps, self._central)
        if total is not None and rows:
            self._pending.append((total, None, (steps, epochs), False))

    def _collect(self, wait: bool) -> None:
        while self._pending:
            host, event, (steps, epochs), central = self._pending[0]
            if event is not None:
                if not event.query():  # the copy is still in flight
                    if not wait:
                        return
                    event.synchronize()
                host = host.numpy().astype(np.float64)
            self._pending.pop(0)
            self._report_silent_points(host, steps)
            values, valid = derive(host, self._plan, central)
            self._chunks.append(_Chunk(steps, epochs, values, valid))

    def _report_silent_points(self, raw: np.ndarray, steps: np.ndarray) -> None:
        """One warning line per branch or skip point that never ran in a recorded step while its block's other
        points did (e.g. a registered skip submodule that the block's forward never calls), once per point."""
        level, frame = 1, sys._getframe(0)
        while frame is not None and frame.f_globals.get("__name__", "").startswith("resviz."):
            level, frame = level + 1, frame.f_back  # the warning names the user's line (rec.frame(), end_step)
        for block, cls, role, point, slot, others in self._watched:
            silent = (raw[:, slot] < 0) & (raw[:, others] >= 0).any(axis=1)  # (R,)
            if silent.any() and (block, point) not in self._reported:
                self._reported.add((block, point))
                hint = ("name a point its forward passes through, e.g. skip=':in' where the skip is the block's "
                        "input" if role == "skip" else "name the submodule whose output is the residual branch")
                warnings.warn(
                    f"Recorder: block '{block}' ({cls}) never ran its {role} point '{point}' in recorded step "
                    f"{int(steps[silent.argmax()])} while its other points ran: no {role}_std or branch_ratio row "
                    f"for it; {hint} (resviz.register_block, docs/blocks.md)", UserWarning, stacklevel=level)

    def _table(self, chunks: list[_Chunk]) -> pd.DataFrame:
        if not chunks:
            return schema.empty(self._per_channel, model=True)
        valid = np.concatenate([c.valid for c in chunks])
        r, m = np.nonzero(valid)  # ordered by step, then catalog order
        if not len(r):
            return schema.empty(self._per_channel, model=True)
        steps = np.concatenate([c.steps for c in chunks])
        epochs = np.concatenate([c.epochs for c in chunks])
        values = np.concatenate([c.values for c in chunks])
        cat, info, n = self._plan.rows, self._info, len(r)
        zeros = np.zeros(n, dtype=np.int8)
        columns = {}
        for key, kind in _INFO_KEYS.items():
            columns[key] = _categorical(zeros, [info[key]]) if kind is str else np.full(n, info[key], dtype=np.int64)
        columns["step"] = steps[r]
        columns["epoch"] = epochs[r]
        for key in ("layer", "metric"):
            codes, names = cat.codes(key)
            columns[key] = _categorical(codes[m], names)
        for key in ("layer_index", "stage", "block"):
            columns[key] = getattr(cat, key)[m]
        columns["value"] = values[r, m]
        codes, names = cat.codes("kind")
        columns["param_kind"] = _categorical(codes[m], names)
        if self._per_channel:
            columns["channel"] = cat.channel[m]
        order = [*schema.STATS_COLUMNS, *schema.RECORDER_COLUMNS] + (["channel"] if self._per_channel else [])
        return schema.validate(pd.DataFrame({k: columns[k] for k in order}))



__all__ = ["DEFAULT_METRICS", "METRICS", "RUN_INFO_KEYS", "Recorder"]
