"""Global-batch statistics under torch.distributed: every rank's partial sums, one collective per flush.

When a default process group with more than one rank is initialised, a Recorder connects (`connect`) on
`__enter__`: a one-time handshake (an all_gather of its settings) on a gloo group of its own, so that a
Recorder on some ranks only, or different `every` / `flush_every` / models, fail in one line instead of
hanging. Hooks and `end_step` are unchanged (no collective, no host sync there). At each flush the ranks'
buffered rows are turned on the host, in float64, into additive partial sums and summed by ONE all_reduce:

    site moments       sum x, sum x^2, count per channel (CUDA's mean/variance as n*mean, n*(var + mean^2))
    act_grad_norm      ||g||^2 of this rank's part; global = sqrt(sum) / world (the gradient of the mean of
                       the ranks' losses, which is what DDP and FSDP average parameter gradients to)
    grad_norm, ||W||   ||local||^2: a DTensor shard (FSDP2 `fully_shard`) from every rank holding a distinct
                       shard; a replicated tensor (DDP: already averaged) from rank 0 only, so it is counted once
    branch_scale       the value, counted once
    grad_rel_norm      sqrt(sum ||g||^2) / sqrt(sum ||W||^2), taken after the sum
    check              f, f^2 of a hash of the flushed steps: the sums equal world * f, world * f^2 only when
                       every rank flushed the same steps (Cauchy-Schwarz), otherwise one clear error

The payload has a fixed size, flush_every rows (gloo aborts the process on all_reduce size mismatch), so
mismatched ranks meet an error, never a crash or a hang: every wait is bounded by RESVIZ_DIST_TIMEOUT
seconds (default 300). After each collective the Recorder holds its tensors until gloo's worker thread has let
go of them (`_let_go`): a worker left holding the last reference to a tensor whose Python object was dropped
needs the GIL to free it, and if the interpreter is shutting down by then (the Recorder's closing flush is
often a script's last collective) the process aborts with `terminate called without an active exception`. The result equals one process on the concatenated batch up to summation order (and
the float64 sum of the ranks' fp32 partial sums).
"""
from __future__ import annotations

import datetime
import os
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from resviz.errors import UserError
from resviz.probes.plan import Plan
from resviz.probes.reductions import SENTINEL

TIMEOUT_ENV = "RESVIZ_DIST_TIMEOUT"
LET_GO_SECONDS = 5.0  # the longest wait for gloo's worker thread to drop a finished collective's tensors
_GROUP: dict = {}  # the recorder's gloo group, made once per default process group


def local(t):
    """The local shard of a DTensor (FSDP2 parameters and gradients), without communication; other values as
    they are. torch.distributed.tensor is only looked at when something imported it."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(t, dtensor.DTensor):
        return t.to_local()
    return t


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """True on the process that writes run folders: rank 0, or the only process."""
    return world()[0] == 0


def agree(value):
    """Rank 0's `value` on every rank (one broadcast on the Recorder's group, bounded in time); the value itself
    in one process. For what every rank must name alike, such as a run_id made from a time and a pid."""
    if world()[1] < 2:
        return value
    seconds = timeout_seconds()
    box = [value]
    try:
        dist.broadcast_object_list(box, src=0, group=_group(seconds))
    except Exception as err:  # noqa: BLE001 - a gloo timeout or a peer gone
        raise _absent(seconds, "started recording", err) from err
    return box[0]


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "300")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds > 0, e.g. {TIMEOUT_ENV}=300")
    return value


def _group(seconds: float):
    """A gloo group for the Recorder's collectives, apart from the training's (no cross-talk with DDP's
    all_reduces, CPU tensors under NCCL too), with the bounded timeout."""
    default = dist.group.WORLD
    made = _GROUP.get("group")
    if made is not None and _GROUP.get("default") is default:
        return made
    try:
        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=seconds))
    except Exception as err:  # noqa: BLE001 - DistStoreError and the like: a rank never came
        raise _absent(seconds, "entered a Recorder", err) from err
    _GROUP.update(group=group, default=default)
    return group


def _absent(seconds: float, what: str, err: BaseException) -> UserError:
    rank, size = world()
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return UserError(
        f"Recorder on rank {rank} of {size}: not every rank {what} (one is gone or did not come within {seconds:g} s: "
        f"{first}); under "
        f"torch.distributed every rank must record, with the same every and flush_every, and call end_step, frame, "
        f"drain and close at the same steps (timeout: {TIMEOUT_ENV})")


def _let_go(*tensors: torch.Tensor) -> None:
    """Return once no one but the caller holds `tensors` (at most LET_GO_SECONDS), sleeping meanwhile.

    A gloo collective runs on a worker thread of the process group, which drops its references to the tensors
    just after the caller's wait has returned. While the caller still holds a tensor's Python object that drop
    is a plain count; once the caller has dropped it, the worker owns the Python object and must take the GIL to
    free it, and a worker that asks for the GIL after the interpreter began to shut down ends the process with
    std::terminate ("terminate called without an active exception", torch 2.14, gloo). Waiting here, with the
    tensors held, means the worker never needs the GIL for them."""
    deadline = time.monotonic() + LET_GO_SECONDS
    held = [t for t in tensors if hasattr(t, "_use_count")]
    while any(t._use_count() > 1 for t in held) and time.monotonic() < deadline:
        time.sleep(0.0005)


def _plan_hash(plan: Plan) -> int:
    text = repr((plan.sites, plan.hooks, plan.params, plan.rel_params, plan.scales, plan.size))
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def _handshake(group, seconds: float, every: int, flush_every: int, plan: Plan) -> None:
    """All ranks' settings side by side; one line naming the first that differs."""
    rank, size = world()
    mine = torch.tensor([every, flush_every, plan.size, _plan_hash(plan)], dtype=torch.int64)
    got = [torch.zeros_like(mine) for _ in range(size)]
    try:
        dist.all_gather(got, mine, group=group)
    except Exception as err:  # noqa: BLE001 - a gloo timeout or a peer gone
        raise _absent(seconds, "entered a Recorder", err) from err
    finally:
        _let_go(mine, *got)
    table = torch.stack(got).tolist()  # (world, 4)
    for i, name in enumerate(("every", "flush_every", "plan size", "model (plan hash)")):
        values = [row[i] for row in table]
        if len(set(values)) > 1:
            each = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise UserError(f"Recorder {name} differs between ranks ({each}): under torch.distributed every rank "
                            "must record the same model with the same every and flush_every")


def _weight(t: torch.Tensor, rank: int, size: int) -> float:
    """1.0 if this rank's part of `t` is counted in the global sum: every distinct shard once, a replicated
    tensor on rank 0 only (or the first coordinate along a DTensor's replicated mesh dimensions)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is None or not isinstance(t, dtensor.DTensor):
        return 1.0 if rank == 0 else 0.0
    mesh = t.device_mesh
    if mesh.size() != size:
        raise UserError(f"parameter on a device mesh of {mesh.size()} ranks in a world of {size}: the Recorder "
                        "sums over the whole world; record a model whose DTensors span every rank")
    coord = mesh.get_coordinate() or []
    replicated = [i for i, p in enumerate(t.placements) if p.is_replicate()]
    return 1.0 if all(coord[i] == 0 for i in replicated) else 0.0


@dataclass(frozen=True)
class _Layout:
    first: np.ndarray  # (Ctot,) staging columns of the sites' first moments
    second: np.ndarray  # (Ctot,)
    count: np.ndarray  # (S,)
    owner: np.ndarray  # (Ctot,) site of each channel column
    act: np.ndarray  # act_grad_norm slots
    norms: np.ndarray  # grad_norm slots, grad_rel_norm slots (||g||), then the extra ||W|| slots
    norm_weight: np.ndarray  # (len(norms),) 1.0 where this rank's part counts
    rel: np.ndarray  # grad_rel_norm slots
    rel_w: np.ndarray  # their ||W|| slots (after the plan's)
    scales: np.ndarray
    scale_weight: np.ndarray


def _layout(plan: Plan, weights: dict[str, float]) -> _Layout:
    sites = plan.sites
    ints = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    first = ints([c for s in sites for c in range(s.offset, s.offset + s.channels)])
    chans = ints([s.channels for s in sites])
    rel = ints([o for _, o in plan.rel_params])
    rel_w = plan.size + np.arange(len(rel), dtype=np.int64)
    names = [n for n, _ in plan.params] + [n for n, _ in plan.rel_params] * 2
    return _Layout(
        first=first, second=first + np.repeat(chans, chans),
        count=ints([s.offset + 2 * s.channels for s in sites]),
        owner=np.repeat(np.arange(len(sites)), chans),
        act=ints(sorted(h.grad for h in plan.hooks if h.grad >= 0)),
        norms=np.concatenate([ints([o for _, o in plan.params]), rel, rel_w]),
        norm_weight=np.array([weights[n] for n in names]),
        rel=rel, rel_w=rel_w,
        scales=ints([o for _, o in plan.scales]),
        scale_weight=np.array([weights[n] for n, _ in plan.scales]),
    )


class Sync:
    """One Recorder's link to the other ranks: the layout of its partial sums and the one collective."""

    def __init__(self, plan: Plan, layout: _Layout, group, flush_every: int, seconds: float):
        self.plan, self.layout, self.group = plan, layout, group
        self.rank, self.size = world()
        self.flush_every, self.seconds = flush_every, seconds
        self.extra = len(layout.rel)  # ||W|| slots after the plan's, for grad_rel_norm
        self.width = plan.size + self.extra + len(layout.act) + len(layout.norms) + len(layout.scales)

    def weight_slots(self, stage: torch.Tensor) -> torch.Tensor:
        """The staging slots that receive this rank's ||W|| of the grad_rel_norm weights."""
        return stage[self.plan.size : self.plan.size + self.extra]

    def _partials(self, raw: np.ndarray, central: bool) -> np.ndarray:
        """(R, plan.size + extra) staging rows -> (R, width) additive float64 partial sums, then presence."""
        lay = self.layout
        out = np.zeros((raw.shape[0], self.width))
        counts = raw[:, lay.count]
        written = counts > 0
        n = np.where(written, counts, 0.0)[:, lay.owner]  # (R, Ctot)
        a, b = raw[:, lay.first], raw[:, lay.second]
        if central:  # mean and biased variance -> sums
            a, b = n * a, n * (b + a * a)
        out[:, lay.first] = np.where(n > 0, a, 0.0)
        out[:, lay.second] = np.where(n > 0, b, 0.0)
        out[:, lay.count] = np.where(written, counts, 0.0)
        base = self.plan.size + self.extra
        for cols, weight, square in ((lay.act, 1.0, True), (lay.norms, lay.norm_weight, True),
                                     (lay.scales, lay.scale_weight, False)):
            v = raw[:, cols]
            present = v >= 0 if square else v != SENTINEL
            out[:, cols] = np.where(present, weight * (v * v if square else v), 0.0)
            out[:, base : base + len(cols)] = present
            base += len(cols)
        return out

    def _totals(self, sums: np.ndarray) -> np.ndarray:
        """(R, width) summed partials -> (R, plan.size) staging rows in sums form (derive with central=False)."""
        lay, size = self.layout, self.plan.size
        out = np.full((sums.shape[0], size), SENTINEL)
        out[:, lay.first] = sums[:, lay.first]
        out[:, lay.second] = sums[:, lay.second]
        counts = sums[:, lay.count]
        out[:, lay.count] = np.where(counts > 0, counts, SENTINEL)
        base = size + self.extra
        present = {}
        for name, cols in (("act", lay.act), ("norms", lay.norms), ("scales", lay.scales)):
            present[name] = sums[:, base : base + len(cols)] > 0
            base += len(cols)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, lay.act] = np.where(present["act"], np.sqrt(sums[:, lay.act]) / self.size, SENTINEL)
            ok = present["norms"]
            n_params = len(lay.norms) - 2 * len(lay.rel)
            out[:, lay.norms[:n_params]] = np.where(ok[:, :n_params], np.sqrt(sums[:, lay.norms[:n_params]]), SENTINEL)
            g, w = np.sqrt(sums[:, lay.rel]), np.sqrt(sums[:, lay.rel_w])
            out[:, lay.rel] = np.where(ok[:, n_params : n_params + len(lay.rel)], g / w, SENTINEL)
            out[:, lay.scales] = np.where(present["scales"], sums[:, lay.scales], SENTINEL)
        return out

    def reduce(self, raw: np.ndarray, steps: np.ndarray, central: bool) -> np.ndarray | None:
        """This rank's buffered rows (R, plan.size + extra) -> the global rows (R, plan.size), in sums form,
        by one all_reduce of a fixed-size float64 payload. None while an exception propagates (the other ranks
        are not there to meet the collective): those rows are dropped."""
        if sys.exc_info()[0] is not None:
            return None
        rows = raw.shape[0]
        if rows > self.flush_every:
            raise ValueError(f"{rows} rows in one flush, more than flush_every={self.flush_every}")
        key = np.ascontiguousarray(steps, dtype=np.int64).tobytes() + rows.to_bytes(8, "little")
        check = float(zlib.crc32(key) & 0xFFFFF)  # < 2^20: f, f^2 and their sums are exact in float64
        payload = np.zeros(2 + self.flush_every * self.width)
        payload[0], payload[1] = check, check * check
        payload[2 : 2 + rows * self.width] = self._partials(raw, central).reshape(-1)
        tensor = torch.from_numpy(payload)
        try:
            dist.all_reduce(tensor, group=self.group)
        except Exception as err:  # noqa: BLE001 - a gloo timeout or a peer gone
            raise _absent(self.seconds, "flushed", err) from err
        finally:
            _let_go(tensor)
        if payload[0] != self.size * check or payload[1] != self.size * check * check:
            shown = ", ".join(str(s) for s in steps[:6]) + (", ..." if rows > 6 else "")
            raise UserError(f"Recorder on rank {self.rank}: the ranks flushed different recorded steps (this rank: "
                            f"{rows} rows, steps [{shown}]); every rank must call end_step with the same steps "
                            "and frame / drain / flush / close at the same points")
        return self._totals(payload[2 : 2 + rows * self.width].reshape(rows, self.width))


def connect(plan: Plan, every: int, flush_every: int, params: dict[str, torch.Tensor]) -> Sync | None:
    """A Sync when a default process group of more than one rank is initialised, else None (one process: the
    Recorder is untouched). Collective: every rank's Recorder must enter together. params: the model's
    named parameters (their DTensor placements say which shards count)."""
    rank, size = world()
    if size < 2:
        return None
    seconds = timeout_seconds()
    group = _group(seconds)
    _handshake(group, seconds, every, flush_every, plan)
    names = {n for n, _ in (*plan.params, *plan.rel_params, *plan.scales)}
    weights = {n: _weight(params[n], rank, size) for n in names}
    return Sync(plan, _layout(plan, weights), group, flush_every, seconds)


__all__ = ["TIMEOUT_ENV", "Sync", "agree", "connect", "is_writer", "local", "world"]
