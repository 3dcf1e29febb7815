"""What is training-specific about a run folder (the folder itself is `resviz.runfolder`): create it or check
it holds the same TrainConfig, the result of a finished run, and the progress a resume starts from (the
checkpoint, with the metrics and statistics rows saved up to it)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from resviz import schema
from resviz.environment import versions
from resviz.io import UnsafeFile, make_folder
from resviz.runfolder import (
    CHECKPOINT_FILE,
    FINISHED,
    METRICS_FILE,
    STATS_FILE,
    RunFolder,
    is_run_folder,
    load_checkpoint,
    metrics_frame,
    read_config,
    read_status,
    read_table,
)
from resviz.train.config import TrainConfig, absolute_dataset
from resviz.train.recipe import groups_rule


@dataclass(frozen=True)
class RunResult:
    run_id: str
    folder: Path
    status: str  # done | diverged | failed | interrupted
    step: int
    train_error: float
    test_error: float
    seconds: float
    reason: str = ""
    extra: dict = field(default_factory=dict)


# keys TrainConfig gained after runs were written, and what a config.json without them trained with
ADDED_KEYS = {"mixup_alpha": 0.0, "param_groups": "single"}


def _config_diff(old: dict, new: dict) -> list[str]:
    """The keys whose values differ in a way that changes the run; param_groups compared as the rule it resolves
    to ("auto" is "single" for every net but Fixup), keys a config.json predates as what they meant then, an
    image folder as its absolute path (runs started before the CLI made it absolute spell it relative)."""
    old = {**ADDED_KEYS, **old}
    keys = sorted((set(old) | set(new)) - set(TrainConfig.RESUME_SAFE) - {"run_id", "versions"})

    def value(d: dict, k: str):
        if k == "param_groups":
            return groups_rule(d[k], d.get("branch_init"))
        return absolute_dataset(d.get(k)) if k == "dataset" else d.get(k)

    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if value(old, k) != value(new, k)]


def prepare_folder(config: TrainConfig, out: str | os.PathLike, run_id: str | None = None) -> Path:
    """Create (or check) the run folder; refuse a folder holding a run with a different config."""
    run_id = run_id or config.run_id
    folder = Path(out) / run_id
    new = {**config.to_dict(), "run_id": run_id}
    if is_run_folder(folder):
        old = read_config(folder)
        differ = _config_diff(old, new)
        if differ:
            raise ValueError(
                f"{folder} holds run {run_id!r} with a different config ({'; '.join(differ)}); "
                "use another --out or --run-id, or the same config to resume"
            )
        _spell_dataset_as_now(folder, old, new["dataset"])
        return folder
    try:
        make_folder(folder)
        RunFolder(out, run_id).write_config({**new, "versions": versions()})
    except PermissionError:
        raise PermissionError(f"cannot write to {folder}: choose a writable --out folder") from None
    except OSError as err:
        raise ValueError(f"cannot create run folder {folder} ({err.strerror}); choose a writable --out") from None
    return folder


def _spell_dataset_as_now(folder: Path, old: dict, dataset: str) -> None:
    """A run started with its image folder spelled relative, now resumed with the same folder spelled absolute:
    config.json takes the absolute spelling, so a later check in another working directory (a Ray worker's)
    finds the same config. Best effort: a folder this process cannot write keeps the old spelling."""
    if old.get("dataset") == dataset or not os.path.isabs(dataset.partition(":")[2]):
        return
    try:
        RunFolder(folder.parent, folder.name).write_config({**old, "dataset": dataset})
    except OSError:
        pass


def finished_result(config: TrainConfig, folder: Path) -> RunResult | None:
    """The result of the run in `folder` if it is finished (done or diverged, with its metrics), else None;
    a folder holding a different config is refused, naming the fields."""
    if not is_run_folder(folder):
        return None
    prepare_folder(config, folder.parent, folder.name)
    status = read_status(folder)
    if status.get("status") not in FINISHED or not (folder / METRICS_FILE).is_file():
        return None
    final = status.get("final") or status.get("last_finite") or {}
    return RunResult(folder.name, folder, status["status"], int(status.get("step", 0)),
                     float(final.get("train_error", float("nan"))), float(final.get("test_error", float("nan"))),
                     float(final.get("seconds", float("nan"))), status.get("reason", ""))


@dataclass
class Progress:
    """Where a run stands: the next step, training seconds so far, the warm-up's end (None: no warm-up), and
    the metrics rows and statistics saved so far."""

    step: int
    seconds: float
    warmup_until: int | None
    metrics: list[dict]
    stats: pd.DataFrame
    interval: dict | None = None  # the logging interval in progress at a mid-interval checkpoint (Ctrl-C)
    data_key: str = ""  # datasets.fingerprint of the training split, saved in the checkpoint


def resume(folder: Path, config: TrainConfig, model, optimizer, device, data_key: str = "") -> Progress:
    """Load the folder's checkpoint (if any) into `model` and `optimizer`; the progress to go on from.
    `data_key` (datasets.fingerprint of the training split) must match the checkpoint's, where it holds one."""
    fresh = Progress(0, 0.0, config.warmup_steps if config.warmup_enabled else None, [], schema.empty(),
                     data_key=data_key)
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return fresh
    try:
        ckpt = load_checkpoint(path, map_location=device)  # weights_only: a crafted file runs no code
    except UnsafeFile:
        raise
    except Exception as err:  # noqa: BLE001 - a checkpoint that cannot be read is a failure we name
        raise ValueError(f"checkpoint {path} cannot be read ({err}); delete it to restart the run") from None
    _load_states(path, ckpt, config, model, optimizer)
    held = ckpt.get("data_key") or ""
    if held and data_key and held != data_key:
        raise ValueError(f"{path} was trained on other data than {config.dataset} holds now ({held.split(':')[0]} "
                         f"training images then, {data_key.split(':')[0]} now, contents differ); restore the data "
                         f"to resume, or start afresh: another --run-id, or delete {folder}")
    progress = Progress(ckpt["step"], ckpt["seconds"], ckpt["warmup_until"], [], schema.empty(),
                        ckpt.get("interval"), data_key)
    try:
        m = read_table(folder / METRICS_FILE, schema.empty_train)
        s = read_table(folder / STATS_FILE, schema.empty)
    except ValueError as err:
        raise ValueError(f"{err}; the run cannot be resumed exactly: delete the folder {folder} to start again") \
            from None
    progress.metrics = m[m["step"] <= progress.step].to_dict("records")
    # the Recorder's rows of steps before the checkpoint's (its step is recorded again); evaluation-time rows
    # (response_std_eval) up to and including it, as the metrics rows: they were measured at that boundary
    by_recorder = s["metric"].isin(schema.RECORDER_METRICS)
    progress.stats = s[(by_recorder & (s["step"] < progress.step)) | (~by_recorder & (s["step"] <= progress.step))]
    _check_rows(folder, config, progress)
    return progress


def _check_rows(folder: Path, config: TrainConfig, progress: Progress) -> None:
    """Refuse to resume over tables that lack rows the checkpoint says were written (a file deleted or
    replaced by hand): the resumed run would silently differ from the uninterrupted one."""
    logged = [r["step"] for r in progress.metrics]
    want = list(range(config.log_every, progress.step + 1, config.log_every))
    if progress.step == config.steps and progress.step % config.log_every:
        want.append(progress.step)  # the last row of a finished run
    by_recorder = progress.stats["metric"].isin(schema.RECORDER_METRICS)  # not the evaluation-time rows
    recorded = set(progress.stats.loc[by_recorder, "step"].unique().tolist())
    want_stats = set(range(0, progress.step, config.record_every))
    if logged != want or (config.record_metrics != () and recorded != want_stats):
        what = "metrics.parquet" if logged != want else "stats.parquet"
        raise ValueError(f"{folder / what} lacks rows up to the checkpoint's step {progress.step} (deleted or "
                         f"replaced?); the run cannot be resumed exactly: delete the folder {folder} to start again")


def _load_states(path: Path, ckpt, config: TrainConfig, model, optimizer) -> None:
    """The checkpoint's weights and optimiser state, or a ValueError saying what the checkpoint holds."""
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "step", "seconds", "warmup_until"} <= set(ckpt):
        raise ValueError(f"{path} is not a resviz training checkpoint; delete it to restart the run")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError):
        held = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        if isinstance(ckpt.get("classes"), list):
            held = {**held, "classes": len(ckpt["classes"])}
        mine = {**config.to_dict(), "classes": _outputs(model)}
        keys = ("arch", "depth", "width", "norm", "shortcut", "classes")
        shown = [k for k in keys if k in held]  # the class count too: it differs when the data set changed
        raise ValueError(
            f"{path} holds another model ({', '.join(f'{k}={held[k]!r}' for k in shown) or 'unknown config'}) "
            f"than this run ({', '.join(f'{k}={mine[k]!r}' for k in shown or keys)}); delete the checkpoint to "
            "restart, or use the matching config and data"
        ) from None


def _outputs(model) -> int | None:
    """The number of classes a model predicts (its spec's, for resviz nets)."""
    return getattr(getattr(model, "spec", None), "num_classes", None)


def save(writer: RunFolder, step: int, progress: Progress, model, optimizer, data, config: TrainConfig) -> None:
    """Write the statistics, the metrics and the checkpoint at `step`, each atomically. The checkpoint holds
    no RNG state: batches are a pure function of (seed, step)."""
    writer.write_tables(progress.stats, metrics_frame(progress.metrics))
    writer.save_checkpoint({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
        "seconds": progress.seconds, "warmup_until": progress.warmup_until, "mean": tuple(data.mean),
        "std": tuple(data.std), "classes": list(data.classes), "config": config.to_dict(),
        "interval": progress.interval, "data_key": progress.data_key})
