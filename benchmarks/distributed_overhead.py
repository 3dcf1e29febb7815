"""Recording overhead of a DDP run: no recording, every=1 and every=20, side by side on the same ranks, and the
collectives the Recorder adds per flush (count and bytes).

Run it under torchrun (2 CPU processes, gloo):

    torchrun --standalone --nproc-per-node 2 benchmarks/distributed_overhead.py
    torchrun --standalone --nproc-per-node 2 benchmarks/distributed_overhead.py --depth 20 --batch 32 --rounds 5

Each rank holds three DDP copies of the same ResNet (one per variant, same initial weights), and the variants run
in interleaved rounds (rotating order) of --steps steps each, so that load from other processes hits them alike;
a round of --steps=20 holds exactly one recording step of every=20, so its mean is the amortised cost. A step is
forward + backward (DDP's gradient all_reduce) + Recorder.end_step + SGD step + zero_grad, on a fixed batch of
--batch images per rank. Reported on rank 0: the median over rounds of each variant's mean step time, its ratio
to "off"'s median, and the paired ratio to "off" (per round, then the median). The Recorder's collectives are counted by wrapping
torch.distributed's all_reduce / all_gather / broadcast_object_list in this process (DDP's own go through its C++
reducer and are not counted): per flush, then the one-time handshake at __enter__; the time of one explicit
flush (host copy + all_reduce + checks) is measured at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections import Counter

import torch
import torch.distributed as dist
import torch.nn.functional as F

from resviz.models import cifar_resnet
from resviz.probes import Recorder

CALLS: Counter = Counter()
BYTES: Counter = Counter()


def count_collectives() -> None:
    """Wrap the Python collectives the Recorder uses with counters (names and payload bytes)."""
    for name in ("all_reduce", "all_gather", "broadcast_object_list"):
        original = getattr(dist, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            CALLS[_name] += 1
            first = args[0] if args else None
            if isinstance(first, torch.Tensor):
                BYTES[_name] += first.numel() * first.element_size()
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=32, help="images per rank per step")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    base = cifar_resnet(args.depth)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    variants = {"off": None, "every=1": 1, "every=20": 20}
    models = {k: torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base)) for k in variants}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    count_collectives()
    with contextlib.ExitStack() as stack:
        recs = {k: stack.enter_context(Recorder(models[k], every=e)) for k, e in variants.items() if e}
        handshake = dict(CALLS)
        CALLS.clear(), BYTES.clear()
        times = {k: [] for k in variants}
        step = dict.fromkeys(variants, 0)
        for r in range(args.rounds + 1):  # round 0: warm-up
            order = list(variants)[r % 3:] + list(variants)[: r % 3]
            for k in order:
                dist.barrier()
                start = time.perf_counter()
                for _ in range(args.steps):
                    F.cross_entropy(models[k](x), y).backward()
                    if k in recs:
                        recs[k].end_step(step[k])
                    opts[k].step()
                    opts[k].zero_grad(set_to_none=True)
                    step[k] += 1
                if r:
                    times[k].append((time.perf_counter() - start) / args.steps)
        flushes_in_run = dict(CALLS), dict(BYTES)
        CALLS.clear(), BYTES.clear()
        dist.barrier()
        start = time.perf_counter()
        recs["every=1"].flush()
        flush_s = time.perf_counter() - start
        one_flush = dict(CALLS), dict(BYTES)
    if rank == 0:
        report(args, world, times, handshake, flushes_in_run, one_flush, flush_s, recs, step)
    dist.destroy_process_group()


def report(args, world, times, handshake, flushes_in_run, one_flush, flush_s, recs, step) -> None:
    off = times["off"]
    print(f"ResNet-{args.depth}, DDP on {world} CPU processes (gloo), batch {args.batch} per rank, "
          f"{args.rounds} rounds x {args.steps} steps per variant")
    print("| variant | median s/step | min..max | ratio of medians | paired ratio to off |")
    print("|---|---|---|---|---|")
    for k, t in times.items():
        paired = statistics.median(a / b for a, b in zip(t, off))
        ratio = statistics.median(t) / statistics.median(off)
        print(f"| {k} | {statistics.median(t):.4f} | {min(t):.3f}..{max(t):.3f} | {ratio:.3f}x | {paired:.3f}x |")
    rec = recs["every=1"]
    sync = rec._dist
    print(f"Recorder collectives, one-time handshake at __enter__ (both Recorders): {handshake}")
    print(f"during the timed run ({step['every=1']} steps at every=1, flush_every={rec._flush_every}): "
          f"calls {flushes_in_run[0]}, bytes {flushes_in_run[1]}")
    print(f"one explicit flush: calls {one_flush[0]}, bytes {one_flush[1]}, {flush_s * 1e3:.1f} ms "
          f"(payload: 8 x (2 + flush_every {sync.flush_every} x width {sync.width}) bytes)")


if __name__ == "__main__":
    main()
