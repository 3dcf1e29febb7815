"""The run folder a live Recorder writes from inside someone else's trainer (Lightning, Hugging Face).

    writer = RunFolder("runs", run_id, config, sinks=[TensorBoardSink("tb")])
    writer.open(first_step=0)                  # config.json, status running (rows of an earlier fit kept below it)
    writer.add_stats(rec.drain())              # new Recorder rows (one host copy, done by the Recorder)
    writer.add_metrics(rows)                   # training-log rows (dicts of schema.TRAIN_COLUMNS)
    writer.save()                              # stats.parquet + metrics.parquet, atomically; sinks get new rows
    writer.finish("done", step=1000)           # save, then status.json

The folder is the one `resviz train` writes, so `runs.load`, `explore` and `resviz report` read it like any other.
"""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from resviz import runs, schema

RUN_INFO_DEFAULTS = {"arch": "unknown", "depth": -1, "norm": "unknown", "shortcut": "unknown", "seed": -1}


def model_info(model: nn.Module) -> dict:
    """arch, depth, norm, shortcut of a model (from a resviz model's `spec`, else its class name, its norm layers'
    kind and unknowns), and its model name and family as the Recorder writes them (`recorder.model_identity`)."""
    from resviz.probes.blocks import model_norm
    from resviz.probes.recorder import model_identity

    name, family = model_identity(model)
    spec = getattr(model, "spec", None)
    if all(hasattr(spec, k) for k in ("arch", "depth", "norm", "shortcut")):
        return {"arch": str(spec.arch), "depth": int(spec.depth), "norm": str(spec.norm),
                "shortcut": str(spec.shortcut), "model": name, "family": family}
    return {"arch": type(model).__name__, "depth": -1, "norm": model_norm(model), "shortcut": "unknown",
            "model": name, "family": family}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside torch.compile's and (Distributed)DataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def default_run_id(prefix: str, arch: str) -> str:
    return f"{prefix}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def versions(**extra: str) -> dict:
    from resviz import __version__

    return {"resviz": __version__, "torch": torch.__version__, "python": platform.python_version(), **extra}


def jsonable(value):
    """A value config.json can hold: numbers, strings, lists and dicts as they are, anything else as its repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return repr(value)


class RunFolder:
    """Writes `out/run_id/`: config.json once, status.json as the fit goes, the two tables at each save."""

    def __init__(self, out: str | os.PathLike, run_id: str, config: dict, sinks=()):
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"run_id={run_id!r} must be a non-empty folder name without '/', e.g. 'lightning-resnet8'")
        self.folder = Path(out) / run_id
        self.run_id = run_id
        self.config = {"run_id": run_id, **RUN_INFO_DEFAULTS, "steps": -1, "dataset": "", **config}
        self.sinks = list(sinks)
        self._stats: list[pd.DataFrame] = []
        self._metrics: list[dict] = []
        self._unsent_stats: list[pd.DataFrame] = []
        self._unsent_metrics: list[dict] = []

    def open(self, first_step: int = 0) -> None:
        """Write config.json and status 'running'. A fit resumed at `first_step` > 0 keeps the rows an earlier fit
        wrote to this folder below that step; a fresh fit (step 0) replaces them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if first_step > 0:
            for name, keep in (("stats.parquet", self._stats), ("metrics.parquet", None)):
                try:
                    old = pd.read_parquet(self.folder / name)
                except (FileNotFoundError, OSError, ValueError):
                    continue
                old = old[old["step"] < first_step]
                if keep is not None:
                    keep.append(old)
                else:
                    self._metrics.extend(old[list(schema.TRAIN_COLUMNS)].to_dict("records"))
        runs.atomic_write_json(self.folder / "config.json", jsonable(self.config))
        runs.write_status(self.folder, "running", step=first_step, pid=os.getpid())

    def add_stats(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self._stats.append(frame)
            self._unsent_stats.append(frame)

    def add_metrics(self, rows: list[dict]) -> None:
        full = [{"run_id": self.run_id, **{k: math.nan for k in schema.TRAIN_COLUMNS if k != "run_id"}, **r}
                for r in rows]
        self._metrics.extend(full)
        self._unsent_metrics.extend(full)

    def stats(self) -> pd.DataFrame:
        if len(self._stats) > 1:  # keep one frame, so repeated saves do not redo the concatenation
            self._stats = [schema.concat(self._stats)]
        return self._stats[0] if self._stats else schema.empty()

    def metrics(self) -> pd.DataFrame:
        if not self._metrics:
            return schema.empty_train()
        frame = pd.DataFrame(self._metrics, columns=list(schema.TRAIN_COLUMNS))
        return schema.coerce_train(frame)

    def save(self) -> None:
        """Write both tables (atomically) and hand the rows added since the last save to the sinks."""
        runs.atomic_write_parquet(self.folder / "stats.parquet", self.stats())
        runs.atomic_write_parquet(self.folder / "metrics.parquet", self.metrics())
        if self.sinks and (self._unsent_stats or self._unsent_metrics):
            new_stats = schema.concat(self._unsent_stats)
            new_metrics = (schema.coerce_train(pd.DataFrame(self._unsent_metrics, columns=list(schema.TRAIN_COLUMNS)))
                           if self._unsent_metrics else schema.empty_train())
            for sink in self.sinks:
                sink.write(new_stats, new_metrics)
        self._unsent_stats, self._unsent_metrics = [], []

    def finish(self, status: str, reason: str = "", step: int = 0, **extra) -> None:
        """Save, close the sinks, then write the final status (also when saving failed: the status says why)."""
        try:
            self.save()
        except Exception as err:  # noqa: BLE001 - the status must still be written
            why = f"saving the tables failed: {type(err).__name__}: {err}"
            status, reason = "failed", f"{reason}; {why}" if reason else why
        finally:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - a dashboard that cannot close must not hide the run's outcome
                    pass
            runs.write_status(self.folder, status, reason, step=int(step), **extra)


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


__all__ = ["LossLog", "RunFolder", "default_run_id", "jsonable", "loss_of", "model_info", "unwrap", "versions"]
