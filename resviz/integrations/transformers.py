"""Record a model while `transformers.Trainer.train` trains it, into a resviz run folder.

    from resviz.integrations.transformers import RecorderCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[RecorderCallback(every=20, out="runs")])
    trainer.train()

When things happen (TrainerCallback events):
  on_train_begin        the Recorder is entered on `model` (hooks registered), config.json + status "running";
                        under torchrun every process records (the flushes sum the ranks' partial sums:
                        global-batch statistics, docs/distributed.md) and only the main process
                        (`state.is_world_process_zero`) writes the run folder
  on_step_begin         `begin_step(state.global_step)`: called once per optimiser step, before the first
                        micro-batch of a gradient accumulation; forgets what an evaluation's forwards wrote
  on_pre_optimizer_step after every micro-batch's backward and after gradient clipping, before optimizer.step():
                        `end_step(state.global_step)` (so grad_norm is the clipped gradient when max_grad_norm > 0).
                        Versions without this event fall back to on_step_end, where gradients are gone (zeroed):
                        then record activations only, e.g. metrics=["response_std"].
  on_log                the Trainer's logged loss / learning_rate / eval_loss become metrics.parquet rows
  on_evaluate           (evaluation loops run between steps and are cleared at the next step's begin)
  on_train_end          the Recorder is left, the tables saved, status "done"
An exception inside `trainer.train()` never reaches a TrainerCallback: use the callback as a context manager,
`with RecorderCallback(...) as cb: trainer.train()`, so that the hooks are removed and the status is "failed"
(or "interrupted" for Ctrl-C) whatever happens.

Models: the Recorder observes norm layers it knows (BatchNorm, GroupNorm, ...) and residual blocks it knows
(resviz, torchvision) and refuses block metrics for other residual blocks (GPT-2's `GPT2Block`): for those,
metrics=["grad_norm"] records the gradient norm of every parameter.
"""
from __future__ import annotations

import math
import os
import time

import transformers
from transformers import TrainerCallback

from resviz.environment import versions
from resviz.models import model_identity, unwrap
from resviz.probes import Recorder
from resviz.probes.distributed import agree
from resviz.runfolder import RunFolder, default_run_id
from resviz.schema import META_COLUMNS, MODEL_COLUMNS

_LOG_KEYS = {"loss": "loss", "learning_rate": "lr", "eval_loss": "test_loss"}


class RecorderCallback(TrainerCallback):
    """A transformers TrainerCallback that records per-layer statistics of the model and writes a run folder.

    every, metrics, per_channel, flush_every: as for Recorder. out: the folder that receives `<run_id>/`.
    run_id: default "hf-<arch>-<time>-<pid>". sinks: live dashboards (TensorBoardSink, WandbSink), given the new
    rows at each save (every `save_every` recorded steps, and at the end).
    """

    def __init__(self, every: int = 20, metrics=None, out: str | os.PathLike = "runs", run_id: str | None = None, *,
                 sinks=(), per_channel: bool = False, flush_every: int = 64, save_every: int = 64):
        self.every, self.metrics, self.out, self.run_id = every, metrics, out, run_id
        self.per_channel, self.flush_every, self.save_every = per_channel, flush_every, save_every
        self.sinks = list(sinks)
        self.recorder: Recorder | None = None
        self.writer: RunFolder | None = None
        self._rows: list[dict] = []
        self._recorded = 0
        self._start = time.perf_counter()
        self._hook = "on_pre_optimizer_step" if hasattr(TrainerCallback, "on_pre_optimizer_step") else "on_step_end"

    @property
    def folder(self):
        return None if self.writer is None else self.writer.folder

    # ---- as a context manager: leave the Recorder whatever happens in trainer.train()
    def __enter__(self) -> RecorderCallback:
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if kind is None:
            self._close("done")
        elif issubclass(kind, KeyboardInterrupt):
            self._close("interrupted", "interrupted by the user (Ctrl-C)")
        else:
            self._close("failed", f"{kind.__name__}: {err}")
        return False

    # ---- events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._close()
        if model is None:
            return
        net = unwrap(model)
        identity = model_identity(net)
        info = {**{k: identity[k] for k in (*META_COLUMNS, *MODEL_COLUMNS) if k in identity}, "seed": int(args.seed)}
        run_id = self.run_id or agree(default_run_id("hf", info["arch"]))  # one name on every rank
        config = {
            **info,
            "run_id": run_id,
            "steps": int(state.max_steps) if state.max_steps and state.max_steps > 0 else -1,
            "source": "transformers",
            "recorder": {"every": self.every, "metrics": list(self.metrics) if self.metrics else None,
                         "per_channel": self.per_channel, "hook": self._hook},
            "trainer": {k: getattr(args, k, None) for k in (
                "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay",
                "max_grad_norm", "max_steps", "num_train_epochs", "lr_scheduler_type", "warmup_steps", "bf16",
                "fp16", "eval_strategy", "eval_steps", "logging_steps", "seed")},
            "model_config": getattr(getattr(net, "config", None), "to_dict", dict)(),
            "versions": versions(transformers=transformers.__version__),
        }
        rec = Recorder(net, every=self.every, metrics=self.metrics, per_channel=self.per_channel,
                       run_info={"run_id": run_id, **info}, flush_every=self.flush_every)
        if state.is_world_process_zero:  # the other ranks record (the flushes are collective) and write nothing
            self.writer = RunFolder(self.out, run_id, sinks=self.sinks)
            self.writer.open(config, first_step=state.global_step)
        rec.__enter__()
        self.recorder = rec
        rec.begin_step(state.global_step)
        self._start = time.perf_counter()
        self._rows, self._recorded = [], 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.begin_step(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._hook == "on_pre_optimizer_step":
            self._end_step(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self._hook == "on_step_end":  # older transformers: after the step, global_step already counts it
            self._end_step(state, state.global_step - 1)

    def _end_step(self, state, step: int | None = None) -> None:
        rec = self.recorder
        if rec is None:
            return
        step = state.global_step if step is None else step
        epoch = state.epoch if state.epoch is not None else None
        recorded = step % self.every == 0
        rec.end_step(step, epoch=epoch)
        if recorded:
            self._recorded += 1
            if self._recorded % self.save_every == 0:
                self._save()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.recorder is None or not logs:
            return
        row = {"step": int(state.global_step), "epoch": float(logs.get("epoch", state.epoch or math.nan)),
               "seconds": time.perf_counter() - self._start}
        row.update({col: float(logs[key]) for key, col in _LOG_KEYS.items() if key in logs})
        if len(row) > 3:
            self._rows.append(row)

    def on_train_end(self, args, state, control, **kwargs):
        self._close("done", step=state.global_step)

    # ---- internals
    def _save(self) -> None:
        stats, rows = self.recorder.drain(), self._merged_rows()  # drain: on every rank (a collective under torchrun)
        if self.writer is not None:
            self.writer.add_stats(stats)
            self.writer.add_metrics(rows)
            self.writer.save()

    def _merged_rows(self) -> list[dict]:
        """The Trainer logs train and eval at one step in separate calls: one row per step."""
        merged: dict[int, dict] = {}
        for r in self._rows:
            merged.setdefault(r["step"], {}).update(r)
        self._rows = []
        return [merged[k] for k in sorted(merged)]

    def _close(self, status: str | None = None, reason: str = "", step: int | None = None) -> None:
        rec, writer = self.recorder, self.writer
        self.recorder = None
        if rec is None:
            return
        last = rec.current_step
        try:
            rec.close()
        finally:
            if writer is not None and status is not None:
                writer.add_stats(rec.drain())
                writer.add_metrics(self._merged_rows())
                writer.finish(status, reason, step=last if step is None else step)


__all__ = ["RecorderCallback"]
