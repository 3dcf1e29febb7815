"""`--engine local`: a grid's runs one after another in this process, or side by side in worker processes.

With `workers > 1` the runs go to spawned processes (several can share one GPU) that die with the sweep:
SIGINT or SIGTERM makes each run in progress save itself at its next step boundary, and no new run starts.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import pandas as pd
from tqdm.auto import tqdm

from resviz.errors import Interrupted, UserError
from resviz.io import make_folder
from resviz.sweeps.common import run_one, steps_done, summary_table
from resviz.train import TrainConfig
from resviz.train.interrupts import StopSignals, describe, signal_on_parent_death


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


# ------------------------------------------------------------------------------ the worker processes
_PARENT: int | None = None  # in a pool worker: the sweep's pid (the worker exits once that process is gone)
_DEATH_SIGNAL = False  # whether the kernel sends SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG)


def _worker_init() -> None:
    """In each pool worker: die with the parent. Linux: the kernel sends SIGTERM when the parent dies
    (PR_SET_PDEATHSIG); elsewhere a thread that sees the parent pid change sends it. SIGTERM makes the run in
    progress save itself at its next step boundary, then the worker exits (`_worker_run`); an idle worker just
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


def _worker_run(config: dict, out: str, threads: int) -> dict:
    """A pool worker's task: `run_one`; a signal ends the worker once its run saved itself, rather than let it
    take another run."""
    try:
        return run_one(config, out, threads)
    except KeyboardInterrupt as err:
        os._exit(128 + getattr(err, "signum", signal.SIGTERM))


def _run_pool(configs: list[TrainConfig], out: str, workers: int, bars: bool, progress: bool) -> list[dict]:
    """The runs in `workers` spawned processes that die with this one; rows in the order they finish."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # CUDA and threads need a fresh interpreter
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    rows: list[dict] = []
    stopped = True  # until the loop ends normally
    try:
        with StopSignals() as stop:
            futures = [pool.submit(_worker_run, dataclasses.replace(c, progress=False).to_dict(), out, threads)
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
                steps.n = sum(steps_done(c, out) for c in configs)
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


__all__ = ["run_sweep", "side_by_side_workers"]
