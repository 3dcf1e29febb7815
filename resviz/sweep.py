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
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd
import torch

from resviz import runs
from resviz.train import RunResult, TrainConfig, train


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


def _run_one(config: TrainConfig, out: str, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    try:
        result = train(config, out)
        return _row(result)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep; train() recorded it
        nan = float("nan")
        return _row(RunResult(config.run_id, Path(out) / config.run_id, "failed", -1, nan, nan, nan,
                              reason=f"{type(err).__name__}: {err}"))


def _steps_done(config: TrainConfig, out: str) -> int:
    """Steps a run has saved so far (its last checkpoint), read from its status file."""
    status = runs.read_status(Path(out) / config.run_id)
    return config.steps if status.get("status") in runs.FINISHED else int(status.get("step", 0) or 0)


def _row(r: RunResult) -> dict:
    return {"run": r.run_id, "status": r.status, "step": r.step, "train_error": r.train_error,
            "test_error": r.test_error, "seconds": r.seconds, "reason": r.reason}


def run_sweep(configs: list[TrainConfig], out: str | os.PathLike = "runs", *, workers: int = 1,
              progress: bool = True) -> pd.DataFrame:
    """Run every config (skipping finished runs) and return the summary table, one row per run."""
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    out = str(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bar = tqdm(total=len(configs), desc="sweep", unit="run", disable=not progress)
    try:
        if workers == 1:
            for config in configs:
                bar.set_postfix_str(config.run_id)
                rows.append(_run_one(dataclasses.replace(config, progress=progress), out, None))
                bar.update(1)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = multiprocessing.get_context("spawn")  # CUDA and threads need a fresh interpreter
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_run_one, dataclasses.replace(c, progress=False), out, threads): c
                           for c in configs}
                steps = tqdm(total=sum(c.steps for c in configs), desc="steps", unit="step", disable=not progress)
                pending = set(futures)
                while pending:  # poll the runs' status files so the steps bar moves between finished runs
                    finished, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                    for future in finished:
                        row = future.result()
                        rows.append(row)
                        bar.set_postfix_str(f"{row['run']}: {row['status']}")
                        bar.update(1)
                    steps.n = sum(_steps_done(c, out) for c in configs)
                    steps.refresh()
                steps.close()
    finally:
        bar.close()
    order = {c.run_id: i for i, c in enumerate(configs)}
    table = pd.DataFrame(rows, columns=list(runs.SUMMARY_COLUMNS))
    return table.sort_values("run", key=lambda s: s.map(order)).reset_index(drop=True)


def format_summary(table: pd.DataFrame) -> str:
    """The end-of-sweep table as text: errors in percent, seconds rounded."""
    shown = table.copy()
    for col in ("train_error", "test_error"):
        shown[col] = (100 * shown[col]).map(lambda v: "—" if pd.isna(v) else f"{v:.2f} %")
    shown["seconds"] = shown["seconds"].map(lambda v: "—" if pd.isna(v) else f"{v:.0f}")
    shown["reason"] = shown["reason"].fillna("").map(lambda r: r[:60])
    return shown.to_string(index=False)


__all__ = ["format_summary", "grid", "run_sweep"]
