"""One training run spread over N processes (`resviz train --nproc N`): what each rank does differently from one
process. The launch itself (torchrun, signals) is `launch.py`.

`Ranks.from_environment()` reads the rank from torchrun's RANK / WORLD_SIZE / LOCAL_RANK; `train(..., ranks=)`
then differs from one process only through the methods of `Ranks`, each the identity (or one process's own
act) when there is one rank:
- `start`: the default process group (gloo on the CPU; NCCL on CUDA, each rank on cuda:LOCAL_RANK);
- `first`, `in_turn`, `lock`: rank 0 decides (the folder's config, a finished run, the run lock, the data set's
  download and cache) and tells the others, whose failure is then rank 0's one line (`Elsewhere`);
- `part`: every rank builds the global batch `loader.batch(step)`, a function of (seed, step), and takes its
  1/N, so with a mean loss DDP's averaged gradient is the one-process gradient on the whole batch;
- `wrap`: the model in DistributedDataParallel (SyncBatchNorm first on CUDA for BatchNorm nets; on the CPU plain
  BatchNorm normalises each rank's part by itself and keeps rank 0's running statistics, see
  docs/distributed.md);
- `combine`: at each log boundary the interval's loss, errors and images summed over the ranks, and any rank's
  stop request, so divergence, the warm-up's end and interrupts are decided alike on every rank;
- `share_buffers`: rank 0's buffers (BatchNorm running statistics) on every rank before an evaluation, which
  every rank runs alike on the same net (the held-out Recorder's flush is collective);
- `NullFolder`: the other ranks' run folder, which writes nothing: rank 0 alone writes config, status, tables
  and checkpoints, and every rank resumes from them;
- `exit`: the process ends with os._exit once its outputs are written and flushed. A gloo worker thread may still
  hold the last reference to a finished collective (DDP's all_reduce carries a Python object from the backward
  pass), and one that asks for the GIL after the interpreter began to shut down aborts the process
  ("terminate called without an active exception", torch 2.14); a rank process has nothing left to run then.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from resviz.errors import UserError, first_line
from resviz.io import make_folder
from resviz.runfolder import run_lock
from resviz.train.interrupts import signal_on_parent_death


class Elsewhere(UserError):
    """A failure another rank reports: rank 0's refusal told to the others, or a peer gone. A rank other than 0
    does not print it (the rank where it happened does)."""


def check_nproc(nproc, batch_size: int) -> int:
    """`nproc` (None: 1) as a number of processes that split `batch_size` evenly, or a ValueError in one line."""
    if nproc is None:
        return 1
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc={nproc!r} must be a whole number of processes, 1 or more")
    if batch_size % nproc:
        fits = [n for n in range(nproc, 0, -1) if batch_size % n == 0][0]
        raise ValueError(f"--batch-size={batch_size} cannot be split evenly over --nproc={nproc} processes; use a "
                         f"batch size divisible by {nproc} (e.g. {batch_size + nproc - batch_size % nproc}) or "
                         f"--nproc {fits}")
    return nproc


class NullFolder:
    """The run folder of a rank other than 0: every write is left to rank 0."""

    def write_status(self, status: str, reason: str = "", **extra) -> dict:
        return {}

    def write_tables(self, stats, metrics) -> None:
        pass

    def save_checkpoint(self, state: dict) -> None:
        pass


class Ranks:
    """This process's place among `size` processes training one run; `Ranks()` is one process alone."""

    def __init__(self, rank: int = 0, size: int = 1, local: int = 0):
        self.rank, self.size, self.local = rank, size, local
        self.stop: int | None = None  # the signal the ranks agreed to stop at, at the last log boundary

    @classmethod
    def from_environment(cls) -> "Ranks | None":
        """The rank torchrun (or a launcher setting the same variables) gave this process; None outside one, or
        in a world of one process."""
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size < 2 or "RANK" not in os.environ:
            return None
        return cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0") or 0))

    @property
    def many(self) -> bool:
        return self.size > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder and shows progress: rank 0, or the only process."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: the GPU of its local rank where the run is on CUDA."""
        if not self.many or device.type != "cuda":
            return device
        if self.local >= torch.cuda.device_count():
            raise UserError(f"rank {self.rank} (local rank {self.local}) has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; use at most that many processes per machine (--nproc)")
        return torch.device("cuda", self.local)

    def start(self, device: torch.device) -> None:
        """The default process group, unless a launcher's script made one; this rank gets SIGTERM (and saves
        itself) should its launcher die."""
        if not self.many or dist.is_initialized():
            return
        signal_on_parent_death(signal.SIGTERM)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    # ---- rank 0 decides, the others hear it
    def _tell(self, outcome: tuple | None) -> tuple:
        box = [outcome]
        try:
            dist.broadcast_object_list(box, src=0)
        except Exception as err:  # noqa: BLE001 - a peer gone: the rank where it happened says why
            raise Elsewhere(f"rank {self.rank} of {self.size}: rank 0 stopped ({first_line(err)})") from err
        return box[0]

    def first(self, fn, *, share: bool = True):
        """fn() on rank 0, and its value on every rank (`share`; else None elsewhere); its error as the same one
        line everywhere (`Elsewhere` on the other ranks). fn() itself in one process."""
        if not self.many:
            return fn()
        outcome, error = None, None
        if self.writes:
            try:
                value = fn()
                outcome = ("value", value if share else None)
            except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised here
                error, outcome = err, ("error", first_line(err))
        told = self._tell(outcome)
        if error is not None:
            raise error
        if told[0] == "error":
            raise Elsewhere(told[1])
        return value if self.writes else told[1]

    def in_turn(self, fn):
        """fn() on rank 0 first (a download, a cache written once), then on the other ranks."""
        value = self.first(fn, share=False)
        return value if self.writes else fn()

    @contextlib.contextmanager
    def lock(self, out: str | os.PathLike, folder: Path):
        """The run folder's lock (`runfolder.run_lock`) held by rank 0 for the block, `out` and the folder made
        first; a rank 0 that cannot take it fails every rank alike."""
        with contextlib.ExitStack() as stack:
            self.first(lambda: (make_folder(out), make_folder(folder), stack.enter_context(run_lock(folder))),
                       share=False)
            yield

    # ---- the training step and its boundaries
    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model every rank trains: DistributedDataParallel around it, its BatchNorms synchronised first on
        CUDA (in place: the same parameters and buffers, so the optimiser and checkpoint are unchanged)."""
        if not self.many:
            return model
        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the root is not a norm layer: converted in place
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(model)

    def part(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's 1/N of the global batch (B, ...), in rank order."""
        if not self.many:
            return x, y
        n = len(y) // self.size
        return x[self.rank * n : (self.rank + 1) * n], y[self.rank * n : (self.rank + 1) * n]

    def combine(self, interval, signum: int | None) -> int | None:
        """At a log boundary: `interval`'s loss, errors and images summed over the ranks (in rank order, in
        float64), written back into it; the signal to stop at (the largest any rank received), kept in `stop`.
        One all_gather; in one process nothing changes and the signal is this process's."""
        if not self.many:
            return signum
        dev = interval.loss.device
        mine = torch.stack([interval.loss.double(), interval.wrong.double(),
                            torch.tensor(float(interval.images), dtype=torch.float64, device=dev),
                            torch.tensor(float(signum or 0), dtype=torch.float64, device=dev)])  # (4,)
        got = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(got, mine)
        table = torch.stack(got).cpu()  # (N, 4)  SYNC: a log boundary
        total = table[:, :3].sum(0)
        interval.loss.fill_(total[0].item())
        interval.wrong.fill_(total[1].item())
        interval.images = int(total[2].item())
        self.stop = int(table[:, 3].max().item()) or None
        return self.stop

    def stop_signal(self, stop) -> int | None:
        """The signal to stop at now: this process's own (one process, checked at every step), or the one the
        ranks agreed on at the last log boundary (several: a rank alone never stops)."""
        if self.many:
            return self.stop
        return stop.signum if stop is not None else None

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers on every rank (BatchNorm's running statistics, which each rank's forward moved by its
        own part), so that the ranks evaluate the net rank 0 saves."""
        if self.many:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def exit(self, code: int) -> None:
        """End this rank's process with `code` once its streams are flushed (module docstring: why os._exit)."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


__all__ = ["Elsewhere", "NullFolder", "Ranks", "check_nproc"]
