"""Throughput of sweep runs sharing one device (`resviz sweep --workers N`): N concurrent runs vs one alone.

Two sweeps through `resviz.sweeps.run_sweep`, each into a fresh temporary folder: one ResNet run (seed 0,
workers=1, in this process), then N runs (seeds 0..N-1, workers=N: N spawned processes, each with
cpu_count // N torch threads). Per run, "steady" images/s is the median of the loop's own images_per_s over
its logging intervals after the warm-up ones (compiling, CUDA-graph capture); the aggregate of the N runs is
the sum, which assumes they overlap (they start together and run the same number of steps). "wall" is
N x steps x batch / the sweep's wall seconds, a lower bound that includes process start, data loading and
compiling. Prints a markdown table.

    python benchmarks/sweep_share.py                                     # CUDA: ResNet-20, 4 workers, 600 steps
    OMP_NUM_THREADS=1 python benchmarks/sweep_share.py --device cpu --steps 30 --log-every 5 --warmup 10
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import best_switches, describe, load_note  # noqa: E402

from resviz import datasets  # noqa: E402
from resviz.sweeps import grid, run_sweep  # noqa: E402
from resviz.train import TrainConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--workers", type=int, default=4, help="concurrent runs")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=600, help="steps per run")
    p.add_argument("--log-every", type=int, default=20, help="steps per logging interval (one images/s value)")
    p.add_argument("--warmup", type=int, default=60, help="steps at the start left out of the steady median")
    p.add_argument("--record-every", type=int, default=20)
    p.add_argument("--best", default="channels_last,amp,cudnn,compile,reduce-overhead" if cuda else "",
                   help="switches, comma-separated (see train_speed.py)")
    p.add_argument("--dataset", default="digits", help="a resviz dataset spec (speed does not depend on it)")
    p.add_argument("--root", default="data")
    return p.parse_args(argv)


def sweep(configs: list[TrainConfig], workers: int) -> tuple[float, list[pd.DataFrame], list[str]]:
    """Wall seconds, each run's metrics table, each run's status."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        table = run_sweep(configs, out, workers=workers, progress=False)
        wall = time.perf_counter() - t0
        metrics = [pd.read_parquet(Path(out) / c.run_id / "metrics.parquet") for c in configs
                   if (Path(out) / c.run_id / "metrics.parquet").is_file()]
    return wall, metrics, [f"{r.status} {r.reason}".strip() for r in table.itertuples()]


def main(argv=None) -> None:
    args = parse_args(argv)
    best = best_switches(args.best)
    steps = args.log_every * math.ceil(args.steps / args.log_every)
    skip = math.ceil(args.warmup / args.log_every)
    if steps // args.log_every <= skip:
        raise SystemExit(f"--steps {args.steps} leaves no logging interval after --warmup {args.warmup}")
    datasets.load(args.dataset, root=args.root)  # build the cache once, before the workers read it
    base = TrainConfig(dataset=args.dataset, root=args.root, depth=args.depth, batch_size=args.batch, steps=steps,
                       log_every=args.log_every, eval_every=steps, checkpoint_every=steps,
                       record_every=args.record_every, device=args.device, progress=False, **best)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"# sweep runs sharing one device: {name}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"\nResNet-{args.depth}, batch {args.batch}, {steps} steps per run, recording every {args.record_every}, "
          f"{describe(best)}; steady = median images/s over intervals {skip + 1}..{steps // args.log_every} of "
          f"{args.log_every} steps; {load_note()} (before)\n")
    rows = []
    for workers in (1, args.workers):
        configs = grid(base, seeds=tuple(range(workers)))
        wall, metrics, status = sweep(configs, workers)
        steady = [float(m["images_per_s"].iloc[skip:].median()) for m in metrics]
        bad = [s for s in status if not s.startswith("done")]
        rows.append((workers, steady, wall, bad))
        print(f"workers={workers}: {load_note()}", file=sys.stderr)
    print("| runs at once | steady images/s per run | aggregate steady images/s | aggregate vs one | "
          "wall s | images/s by wall |")
    print("|---|---|---|---|---|---|")
    one = sum(rows[0][1]) if rows[0][1] else float("nan")
    for workers, steady, wall, bad in rows:
        agg = sum(steady)
        per = ", ".join(f"{v:,.0f}" for v in steady) or "—"
        by_wall = workers * steps * args.batch / wall
        note = f" (not done: {'; '.join(bad)})" if bad else ""
        print(f"| {workers} | {per} | {agg:,.0f} | {agg / one:.2f}x | {wall:.1f} | {by_wall:,.0f}{note} |")
    if len(rows[1][1]) > 1:
        print(f"\nspread of the concurrent runs' steady rates: {min(rows[1][1]):,.0f}..{max(rows[1][1]):,.0f}, "
              f"median {statistics.median(rows[1][1]):,.0f}; {load_note()} (after)")


if __name__ == "__main__":
    main()
