"""Record a LightningModule while `lightning.pytorch.Trainer.fit` trains it, into a resviz run folder.

    from resviz.integrations.lightning import RecorderCallback
    trainer = L.Trainer(max_steps=500, callbacks=[RecorderCallback(every=20, out="runs")])
    trainer.fit(module, loader)                   # runs/<run_id>/ opens in explore / resviz report

When things happen (Lightning 2.x hooks):
  on_fit_start              the Recorder is entered (hooks registered, before a compiled forward first runs),
                            config.json and status "running" written. Under DDP / FSDP every rank records (the
                            flush sums the ranks' partial sums: global-batch statistics, docs/distributed.md)
                            and only rank 0 (`trainer.is_global_zero`) writes the run folder
  on_train_batch_start      `begin_step(trainer.global_step)`: the forward passes of this batch record when
                            global_step % every == 0, and whatever an evaluation wrote since is forgotten
  on_validation_start/end   the Recorder is paused (sanity check and validation never reach the table)
  on_before_optimizer_step  after backward (and after the last batch of a gradient accumulation), before the
                            step: `end_step(global_step)` once per batch. With several optimisers (manual
                            optimisation) the first step of the batch is recorded: gradients then are those of
                            the first backward.
  on_fit_end / on_exception the Recorder is left (hooks removed), the tables saved, status done / failed /
                            interrupted (KeyboardInterrupt). `teardown` leaves it too, should neither run.
Under DDP the loss in `metrics.parquet` is rank 0's (its part of the batch), as Lightning logs it without sync_dist.
Rows of `stats.parquet` have step = trainer.global_step (optimiser steps before this one). `metrics.parquet` has
one row every `log_every` optimiser steps: the mean training loss of the batches since (the `loss` that
training_step returned, times the accumulation factor Lightning divided it by), the learning rate of the first
optimiser's first group, seconds since fit start, and test_error / test_loss from the last validation when the
module logged `val_error` / `val_loss` (on the first row after it); columns nobody knows are NaN.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from resviz.environment import versions
from resviz.models import model_identity, unwrap
from resviz.probes import Recorder
from resviz.probes.distributed import agree
from resviz.runfolder import RunFolder, default_run_id
from resviz.schema import META_COLUMNS, MODEL_COLUMNS


def loss_of(value) -> torch.Tensor | None:
    """The loss tensor in a training step's output (a tensor, or a mapping with 'loss'), detached; else None."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict) and isinstance(value.get("loss"), torch.Tensor):
        return value["loss"].detach()
    return None


class LossLog:
    """Mean training loss per log row, kept on the device until a save (one host copy for all rows then)."""

    def __init__(self):
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._rows: list[tuple[dict, torch.Tensor | None]] = []

    def add(self, loss: torch.Tensor | None) -> None:
        if loss is None:
            return
        loss = loss.float().reshape(())
        self._sum = loss.clone() if self._sum is None else self._sum.add_(loss)
        self._count += 1

    def row(self, **columns) -> None:
        """Close a log row: the mean of the losses added since the last row (NaN if none)."""
        mean = self._sum / self._count if self._count else None
        self._rows.append((columns, mean))
        self._sum, self._count = None, 0

    def amend(self, step: int, **columns) -> bool:
        """Add columns to the last closed row if it is still held and was closed at `step`; False otherwise."""
        if self._rows and self._rows[-1][0].get("step") == step:
            self._rows[-1][0].update(columns)
            return True
        return False

    @property
    def pending(self) -> bool:
        return self._count > 0

    def take(self) -> list[dict]:
        """The closed rows with their losses on the host (one device-to-host copy)."""
        if not self._rows:
            return []
        tensors = [m for _, m in self._rows if m is not None]
        host = iter(torch.stack(tensors).cpu().numpy().astype(np.float64).tolist()) if tensors else iter(())
        rows = [{**c, "loss": next(host) if m is not None else math.nan} for c, m in self._rows]
        self._rows = []
        return rows


def _seed() -> int:
    """The seed `lightning.seed_everything` set (it exports PL_GLOBAL_SEED), else -1."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", ""))
    except ValueError:
        return -1


def _trainer_settings(trainer: pl.Trainer) -> dict:
    fields = ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
              "val_check_interval", "check_val_every_n_epoch", "log_every_n_steps", "num_devices", "num_nodes",
              "world_size")
    out = {f: getattr(trainer, f, None) for f in fields}
    out["precision"] = str(trainer.precision)
    out["strategy"] = type(trainer.strategy).__name__
    out["accelerator"] = type(trainer.accelerator).__name__
    out["optimizers"] = [type(o).__name__ for o in trainer.optimizers]
    out["automatic_optimization"] = bool(trainer.lightning_module.automatic_optimization)
    return out


# What a LightningModule's validation logs, by the names the runs' training log uses (first name found wins).
EVAL_KEYS = {"test_error": ("val_error", "val/error", "valid_error"), "test_loss": ("val_loss", "val/loss", "valid_loss")}


def _eval_columns(logged) -> dict:
    """test_error / test_loss from the validation's logged values (`val_error`, `val_loss`, ...), where present."""
    out = {}
    for column, names in EVAL_KEYS.items():
        name = next((n for n in names if n in logged), None)
        if name is not None:
            out[column] = float(logged[name])  # once per validation, outside any hook
    return out


class RecorderCallback(pl.Callback):
    """A Lightning callback that records per-layer statistics of the module it trains and writes a run folder.

    every: record the steps with global_step % every == 0. metrics: Recorder metric names (None: its defaults;
    a model whose blocks the Recorder does not know needs e.g. ["response_std", "grad_norm"]). out: the folder
    that receives `<run_id>/`. run_id: default "lightning-<arch>-<time>-<pid>". module: the attribute path of
    the network inside the LightningModule ("net", "model.backbone"); None takes the one child that holds all
    parameters if there is one, else the LightningModule itself. log_every: optimiser steps per metrics row
    (default: every). sinks: live dashboards, e.g. [TensorBoardSink(logdir)] or [WandbSink()], given the new rows
    at each save (the end of each training epoch and of the fit). per_channel, flush_every: as for Recorder.
    """

    def __init__(self, every: int = 20, metrics=None, out: str | os.PathLike = "runs", run_id: str | None = None, *,
                 module: str | None = None, log_every: int | None = None, sinks=(), per_channel: bool = False,
                 flush_every: int = 64):
        super().__init__()
        self.every, self.metrics, self.out, self.run_id = every, metrics, out, run_id
        self.module, self.per_channel, self.flush_every = module, per_channel, flush_every
        self.log_every = log_every or every
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"log_every={log_every!r} must be an integer >= 1, e.g. log_every=20")
        self.sinks = list(sinks)
        self.recorder: Recorder | None = None
        self.writer: RunFolder | None = None
        self._pause = contextlib.ExitStack()
        self._reset()

    def _reset(self) -> None:
        self._batch_idx = 0
        self._stepped = False  # this batch took its (first) optimiser step
        self._losses = LossLog()
        self._start = time.perf_counter()
        self._images = 0
        self._eval: dict = {}  # test_error / test_loss of the last validation, for the next metrics row

    @property
    def folder(self):
        """The run folder being written (None before fit starts, and on ranks other than 0, which record but do not
        write)."""
        return None if self.writer is None else self.writer.folder

    # ---- what to record
    def target(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network the Recorder hooks: `module`'s path, else the only child holding all parameters."""
        if self.module:
            try:
                return unwrap(pl_module.get_submodule(self.module))
            except AttributeError as err:
                children = ", ".join(n for n, _ in pl_module.named_children()) or "none"
                raise ValueError(f"module={self.module!r} is not a submodule of {type(pl_module).__name__} "
                                 f"(its children: {children})") from err
        params = {id(p) for p in pl_module.parameters()}
        for _, child in pl_module.named_children():
            if params and {id(p) for p in child.parameters()} == params:
                return unwrap(child)
        return pl_module

    # ---- fit lifecycle
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()  # a second fit with the same callback starts afresh
        self._reset()
        net = self.target(pl_module)
        identity = model_identity(net)
        info = {**{k: identity[k] for k in (*META_COLUMNS, *MODEL_COLUMNS) if k in identity}, "seed": _seed()}
        run_id = self.run_id or agree(default_run_id("lightning", info["arch"]))  # one name on every rank
        config = {
            **info,
            "run_id": run_id,
            "steps": trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else -1,
            "source": "lightning",
            "lightning_module": type(pl_module).__name__,
            "recorded_module": self.module or "",
            "recorder": {"every": self.every, "metrics": list(self.metrics) if self.metrics else None,
                         "per_channel": self.per_channel},
            "trainer": _trainer_settings(trainer),
            "versions": versions(lightning=pl.__version__),
        }
        rec = Recorder(net, every=self.every, metrics=self.metrics, per_channel=self.per_channel,
                       run_info={"run_id": run_id, **info}, flush_every=self.flush_every)
        if trainer.is_global_zero:  # the other ranks record (the flushes are collective) and write nothing
            self.writer = RunFolder(self.out, run_id, sinks=self.sinks)
            self.writer.open(config, first_step=trainer.global_step)
        rec.__enter__()
        self.recorder = rec
        rec.begin_step(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.recorder is not None:
            self.recorder.begin_step(trainer.global_step)
            self._batch_idx = batch_idx
            self._stepped = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        rec = self.recorder
        if rec is None or self._stepped:  # another optimiser of the same batch: recorded already
            return
        n = trainer.num_training_batches
        epoch = trainer.current_epoch + self._batch_idx / n if isinstance(n, int) and n > 0 else None
        rec.end_step(trainer.global_step, epoch=epoch)
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.recorder is None:
            return
        loss = loss_of(outputs)
        if loss is not None and pl_module.automatic_optimization:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divided it for the accumulated backward
        self._losses.add(loss)
        first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
        self._images += int(first.shape[0]) if hasattr(first, "shape") and len(first.shape) else 0
        if self._stepped and trainer.global_step % self.log_every == 0:
            self._log_row(trainer)

    def _log_row(self, trainer) -> None:
        seconds = time.perf_counter() - self._start
        lr = math.nan
        if trainer.optimizers and trainer.optimizers[0].param_groups:
            lr = float(trainer.optimizers[0].param_groups[0].get("lr", math.nan))
        n = trainer.num_training_batches
        epoch = trainer.current_epoch + (self._batch_idx + 1) / n if isinstance(n, int) and n > 0 else math.nan
        self._losses.row(step=int(trainer.global_step), epoch=float(epoch), lr=lr, seconds=seconds,
                         images_per_s=self._images / seconds if seconds > 0 else math.nan, **self._eval)
        self._eval = {}

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.recorder is not None:
            self._pause.enter_context(self.recorder.paused())

    def on_validation_end(self, trainer, pl_module) -> None:
        self._pause.close()
        if self.recorder is not None and not trainer.sanity_checking:
            columns = _eval_columns(trainer.callback_metrics)  # joins this step's row, else the next one
            if not self._losses.amend(int(trainer.global_step), **columns):
                self._eval = columns

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.recorder is not None:
            self._save()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.recorder is not None and (self._losses.pending or self._eval):
            self._log_row(trainer)
        self._close("done", step=trainer.global_step)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self._close("interrupted", "interrupted by the user (Ctrl-C)", step=trainer.global_step)
        else:
            self._close("failed", f"{type(exception).__name__}: {exception}", step=trainer.global_step)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._close("failed", "the fit ended without on_fit_end or on_exception", step=trainer.global_step)

    # ---- internals
    def _save(self) -> None:
        stats, rows = self.recorder.drain(), self._losses.take()  # drain: on every rank (a collective under DDP)
        if self.writer is not None:
            self.writer.add_stats(stats)
            self.writer.add_metrics(rows)
            self.writer.save()

    def _close(self, status: str | None = None, reason: str = "", step: int = 0) -> None:
        """Leave the Recorder (hooks removed, always first), then save and write the status; idempotent."""
        rec, writer = self.recorder, self.writer
        self.recorder = None
        self._pause.close()
        if rec is None:
            return
        try:
            rec.close()
        finally:
            if writer is not None and status is not None:
                writer.add_stats(rec.drain())
                writer.add_metrics(self._losses.take())
                writer.finish(status, reason, step=step)


__all__ = ["RecorderCallback"]
