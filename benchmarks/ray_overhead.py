"""Overhead of `resviz sweep --engine ray` against `--engine local`, and runs sharing one GPU on Ray.

CPU mode (default): the same grid (plain and ResNet, seeds 0 and 1: 4 runs) is trained twice, each into a fresh
temporary folder: by `resviz.sweeps.run_sweep` (workers=1, in this process) and by
`resviz.sweeps.run_grid_on_ray` on a private Ray instance with --concurrency CPUs (default 1: one run at a
time, so the two engines do the same work in the same order). "start-up" is `ray.init` (the local engine has
none); "wall" is the grid's seconds after start-up; then the same grid on all cores: the local engine with one
worker per core, and the Ray engine as `resviz sweep --engine ray` runs it without --address (a private cluster
in a loopback-only namespace: its wall includes starting and stopping Ray); "per run" is wall / runs; "Δ per run" is the Ray engine's
per-run seconds minus the local engine's. Every run uses one torch thread.

GPU mode (`--device cuda`): on a Ray instance with one GPU, 1 run alone and then N runs at --gpus-per-run
(default 0.25: N = 4 share the GPU); per run, "steady" images/s is the median of the loop's images_per_s over
its logging intervals after the first two; the aggregate is the sum over the N runs (they start together and
run the same steps). Prints markdown tables.

    OMP_NUM_THREADS=1 python benchmarks/ray_overhead.py                        # CPU: tiny digits nets, 4 runs
    python benchmarks/ray_overhead.py --device cuda --dataset cifar10 --depth 20 --width 16 --steps 600
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--root", default="data")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=1, help="CPUs given to Ray in CPU mode (runs at once)")
    p.add_argument("--gpus-per-run", type=float, default=0.25, help="GPU mode: the share of the GPU per run")
    return p.parse_args(argv)


def base_config(args: argparse.Namespace):
    from resviz.train import TrainConfig

    return TrainConfig(dataset=args.dataset, root=args.root, depth=args.depth, width=args.width, steps=args.steps,
                       batch_size=args.batch_size, log_every=args.log_every, eval_every=args.steps,
                       checkpoint_every=args.steps, record_every=args.log_every, device=args.device, progress=False)


def start_ray(**resources) -> float:
    import ray

    start = time.perf_counter()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, **resources)
    return time.perf_counter() - start


def steady_images_per_s(folder: Path) -> float:
    rates = pd.read_parquet(folder / "metrics.parquet")["images_per_s"].tolist()
    return statistics.median(rates[2:] or rates)


def cpu_overhead(args: argparse.Namespace) -> str:
    import ray

    from resviz.sweeps import grid, run_grid_on_ray, run_sweep

    torch.set_num_threads(1)
    configs = grid(base_config(args), archs=("plain", "resnet"), seeds=(0, 1))
    from resviz import datasets

    datasets.load(args.dataset, root=args.root)  # the download/cache is not part of either engine's time
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_sweep(configs, Path(tmp) / "local", progress=False)
        rows.append(("local (workers=1)", 0.0, time.perf_counter() - start))
        startup = start_ray(num_cpus=args.concurrency)
        try:
            start = time.perf_counter()
            run_grid_on_ray(configs, Path(tmp) / "ray", gpus_per_run=0, progress=False)
            rows.append((f"ray, joined ({args.concurrency} CPU)", startup, time.perf_counter() - start))
        finally:
            ray.shutdown()
        cpus = os.cpu_count() or 1
        start = time.perf_counter()
        run_sweep(configs, Path(tmp) / "local-all", workers=cpus, progress=False)
        rows.append((f"local (workers={cpus})", 0.0, time.perf_counter() - start))
        start = time.perf_counter()  # the user's path: no --address, a private cluster in its own namespace
        run_grid_on_ray(configs, Path(tmp) / "ray-private", gpus_per_run=0, progress=False)
        rows.append((f"ray, private ({cpus} CPU; start, grid, stop)", 0.0, time.perf_counter() - start))
    lines = [f"{len(configs)} runs, {args.dataset} {args.depth}-layer width {args.width}, {args.steps} steps, "
             f"batch {args.batch_size}, CPU, {os.cpu_count()} cores", "",
             "| engine | start-up s | wall s | per run s | Δ per run s |", "|---|---|---|---|---|"]
    for i, (name, startup, wall) in enumerate(rows):
        per_run = wall / len(configs)
        local_per_run = rows[0 if i < 2 else 2][2] / len(configs)  # each Ray row against the local row above it
        lines.append(f"| {name} | {startup:.1f} | {wall:.1f} | {per_run:.2f} | {per_run - local_per_run:+.2f} |")
    return "\n".join(lines)


def gpu_sharing(args: argparse.Namespace) -> str:
    import ray

    from resviz.sweeps import grid, run_grid_on_ray

    n = max(1, round(1 / args.gpus_per_run))
    startup = start_ray(num_gpus=1, num_cpus=max(n, 1))
    lines = [f"ResNet-{args.depth} width {args.width}, {args.dataset}, {args.steps} steps, batch {args.batch_size}, "
             f"{torch.cuda.get_device_name(0)}; Ray start-up {startup:.1f} s", "",
             "| runs on one GPU | GPU per run | steady images/s per run | aggregate images/s | wall s |",
             "|---|---|---|---|---|"]
    try:
        for runs, share in ((1, 1.0), (n, args.gpus_per_run)):
            configs = grid(base_config(args), seeds=tuple(range(runs)))
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                run_grid_on_ray(configs, tmp, gpus_per_run=share, progress=False)
                wall = time.perf_counter() - start
                rates = [steady_images_per_s(Path(tmp) / c.run_id) for c in configs]
            lines.append(f"| {runs} | {share:g} | {statistics.median(rates):.0f} | {sum(rates):.0f} | {wall:.1f} |")
    finally:
        ray.shutdown()
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(gpu_sharing(args) if args.device == "cuda" else cpu_overhead(args))


if __name__ == "__main__":
    main()
