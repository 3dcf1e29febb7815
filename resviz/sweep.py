"""Grids of training runs: depth x arch x norm x shortcut x seed, skipping what is finished.

Each run is one `train.train` call into `out/<run_id>/`, so a re-run of the same sweep skips the runs
that are done (or diverged), resumes the ones that were cut, and retries the failed ones. With
`workers > 1` the runs go to separate processes (several can share one GPU).
"""
from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd
import torch

from resviz import runs
from resviz.errors import Interrupted, RunBusy, UserError
from resviz.io import make_folder
from resviz.train import RunResult, TrainConfig, train
from resviz.train.signals import StopSignals, describe, signal_on_parent_death


def grid(
    base: TrainConfig,
    *,
    depths=(None,),
    archs=(None,),
    norms=(None,),
    shortcuts=(None,),
    seeds=(None,),
    branch_inits=(None,),
) -> list[TrainConfig]:
    """Every combination of the given values over `base` (None keeps base's value). Invalid ones raise."""
    configs, seen = [], set()
    for depth, arch, norm, shortcut, seed, branch_init in itertools.product(
        depths, archs, norms, shortcuts, seeds, branch_inits
    ):
        changes = {k: v for k, v in dict(depth=depth, arch=arch, norm=norm, shortcut=shortcut, seed=seed).items()
                   if v is not None}
        if branch_init is not None:
            changes["branch_init"] = None if branch_init == "none" else branch_init
        config = dataclasses.replace(base, **changes)
        if config.arch == "plain" and config.shortcut != base.shortcut:
            continue  # a plain net has no shortcut: one run covers every shortcut value
        config.validate()
        if config.run_id not in seen:
            seen.add(config.run_id)
            configs.append(config)
    return configs


def run_one(config: TrainConfig | dict, out: str | os.PathLike, threads: int | None = None) -> dict:
    """Train ONE config into `out/<run_id>/` (resuming or skipping it as `train` does) and return its summary
    row (`runs.SUMMARY_COLUMNS`: run, status, step, errors, seconds, reason). Never raises for a failed run:
    the row says `failed` (or `busy`: another live process holds the run folder) with the reason. A signal
    (SIGINT, SIGTERM) still raises `resviz.errors.Interrupted` after the run saved itself. What a remote
    worker (a process pool, Ray) calls; `config` may be a `TrainConfig.to_dict()` mapping."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if threads:
        torch.set_num_threads(threads)
    nan = float("nan")
    try:
        return _row(train(config, out))
    except KeyboardInterrupt as err:
        if _PARENT is not None:  # a pool worker: the run saved itself; end here rather than take another run
            os._exit(128 + getattr(err, "signum", signal.SIGTERM))
        raise
    except RunBusy as err:
        return _row(RunResult(config.run_id, Path(out) / config.run_id, "busy", -1, nan, nan, nan,
                              reason=f"skipped: {err}"))
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep; train() recorded it
        return _row(RunResult(config.run_id, Path(out) / config.run_id, "failed", -1, nan, nan, nan,
                              reason=f"{type(err).__name__}: {err}"))


_PARENT: int | None = None  # in a pool worker: the sweep's pid (the worker exits once that process is gone)
_DEATH_SIGNAL = False  # whether the kernel sends SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG)


def _worker_init() -> None:
    """In each pool worker: die with the parent. Linux: the kernel sends SIGTERM when the parent dies
    (PR_SET_PDEATHSIG); elsewhere a thread that sees the parent pid change sends it. SIGTERM makes the run in
    progress save itself at its next step boundary, then the worker exits (`run_one`); an idle worker just
    ends. A worker still there two minutes after its parent is gone exits regardless."""
    global _PARENT, _DEATH_SIGNAL
    _PARENT = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the sweep decides, not idle workers
    _DEATH_SIGNAL = signal_on_parent_death(signal.SIGTERM)  # else the watchdog below sends it
    if os.getppid() != _PARENT:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch_parent, daemon=True, name="resviz-parent-watch").start()


def _watch_parent() -> None:
    while os.getppid() == _PARENT:
        time.sleep(1.0)
    if not _DEATH_SIGNAL:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(120.0)
    os._exit(143)


def _steps_done(config: TrainConfig, out: str) -> int:
    """Steps a run has saved so far (its last checkpoint), read from its status file."""
    status = runs.read_status(Path(out) / config.run_id)
    return config.steps if status.get("status") in runs.FINISHED else int(status.get("step", 0) or 0)


def _row(r: RunResult) -> dict:
    return {"run": r.run_id, "status": r.status, "step": r.step, "train_error": r.train_error,
            "test_error": r.test_error, "seconds": r.seconds, "reason": r.reason}


def side_by_side_workers() -> int:
    """Runs at once that suit this machine for small nets: two where there are two cores or more, one thread
    each (a small conv gains little from a second thread, a lot from a second run beside it)."""
    return max(1, min(2, os.cpu_count() or 1))


def run_sweep(configs: list[TrainConfig], out: str | os.PathLike = "runs", *, workers: int = 1,
              progress: bool = True) -> pd.DataFrame:
    """Run every config (skipping finished runs) and return the summary table, one row per run.
    SIGINT/SIGTERM: the runs in progress save themselves, no new one starts, `Interrupted` is raised."""
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    out = str(make_folder(out))
    tty = sys.stderr.isatty()
    rows: list[dict] = []
    if workers == 1:
        with StopSignals() as stop:
            for i, config in enumerate(configs):
                if stop.signum is not None:
                    stop.handled = True
                    raise Interrupted(stop.signum, f"sweep interrupted by {describe(stop.signum)} before run "
                                      f"{config.run_id}")
                rows.append(run_one(dataclasses.replace(config, progress=progress), out))
                _say(progress, rows[-1], i + 1, len(configs))
    else:
        rows = _run_pool(configs, out, workers, progress and tty, progress)
    return summary_table(rows, configs)


def _say(progress: bool, row: dict, done: int, total: int) -> None:
    if progress:
        print(f"sweep: {done}/{total} {row['run']}: {row['status']}", file=sys.stderr, flush=True)


def _run_pool(configs: list[TrainConfig], out: str, workers: int, bars: bool, progress: bool) -> list[dict]:
    """The runs in `workers` spawned processes that die with this one; rows in the order they finish."""
    from tqdm.auto import tqdm

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # CUDA and threads need a fresh interpreter
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    rows: list[dict] = []
    stopped = True  # until the loop ends normally
    try:
        with StopSignals() as stop:
            futures = [pool.submit(run_one, dataclasses.replace(c, progress=False).to_dict(), out, threads)
                       for c in configs]
            steps = tqdm(total=sum(c.steps for c in configs), desc="sweep steps", unit="step", disable=not bars)
            pending = set(futures)
            while pending:  # poll the runs' status files so the steps bar moves between finished runs
                if stop.signum is not None:
                    stop.handled = True
                    raise Interrupted(stop.signum, f"sweep interrupted by {describe(stop.signum)}; the runs in "
                                      "progress saved themselves")
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                if stop.signum is not None:
                    pending |= finished
                    continue  # stop first: a worker hit by the same signal may have ended its future
                for future in finished:
                    rows.append(_outcome(future))
                    _say(progress, rows[-1], len(rows), len(configs))
                steps.n = sum(_steps_done(c, out) for c in configs)
                steps.refresh()
            steps.close()
            stopped = False
    finally:
        if stopped:  # a signal or an error: the workers' runs save themselves, then they go
            _stop_workers(pool, signal.SIGTERM)
        pool.shutdown(wait=not stopped, cancel_futures=True)
    return rows


def _outcome(future) -> dict:
    try:
        return future.result()
    except KeyboardInterrupt as err:  # a worker stopped by a signal of its own (saved at a step boundary)
        raise Interrupted(getattr(err, "signum", signal.SIGINT), str(err)) from None
    except BrokenProcessPool as err:  # a worker killed from outside (kill -9, out of host memory)
        raise UserError(f"a sweep worker died ({err}); run the same command again to resume its runs") from None


def _stop_workers(pool: ProcessPoolExecutor, signum: int, grace: float = 60.0) -> None:
    """Cancel the runs not started and send the workers SIGTERM (not a second SIGINT, which would stop a run
    mid-step): a training worker saves its run at the next step boundary and ends, an idle one ends at once.
    Wait for them (an idle worker killed while holding the pool's queue lock would leave its siblings waiting
    forever, so whatever is left after `grace` seconds is killed: every file is written atomically)."""
    for future in list(getattr(pool, "_pending_work_items", {}).values()):
        future.future.cancel()
    procs = [p for p in list((getattr(pool, "_processes", None) or {}).values()) if p.is_alive()]  # no public list
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def summary_table(rows: list[dict], configs: list[TrainConfig] | None = None) -> pd.DataFrame:
    """Run outcomes (`run_one`'s rows) as the sweep's summary table, in the order of `configs` when given."""
    table = pd.DataFrame(rows, columns=list(runs.SUMMARY_COLUMNS))
    if configs is None:
        return table.reset_index(drop=True)
    order = {c.run_id: i for i, c in enumerate(configs)}
    return table.sort_values("run", key=lambda s: s.map(order)).reset_index(drop=True)


def format_summary(table: pd.DataFrame) -> str:
    """The end-of-sweep table as text (errors in percent, seconds rounded), then each distinct reason a run
    did not finish, whole and once, with the runs it hit."""
    shown = table.copy()
    for col in ("train_error", "test_error"):
        shown[col] = (100 * shown[col]).map(lambda v: "—" if pd.isna(v) else f"{v:.2f} %")
    shown["seconds"] = shown["seconds"].map(lambda v: "—" if pd.isna(v) else f"{v:.0f}")
    unfinished = shown[~shown["status"].isin(runs.FINISHED) & (shown["reason"].fillna("") != "")]
    reasons = list(dict.fromkeys(unfinished["reason"]))
    shown["reason"] = shown["reason"].fillna("").map(
        lambda r: f"[{reasons.index(r) + 1}]" if r in reasons else r[:40])
    lines = [shown.to_string(index=False)]
    for i, reason in enumerate(reasons, 1):
        hit = unfinished[unfinished["reason"] == reason]["run"].tolist()
        lines.append(f"[{i}] {', '.join(hit)}:\n    {reason}")
    return "\n".join(lines)


__all__ = ["format_summary", "grid", "run_one", "run_sweep", "side_by_side_workers", "summary_table"]
