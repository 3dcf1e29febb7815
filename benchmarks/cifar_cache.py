"""Cold and warm load time of the CIFAR-10 JPEG copy through `resviz.datasets.load("imagefolder:...")`.

Cold: decode all 60,000 JPEGs, compute mean/std, write the cache (the cache file is deleted before each round).
Warm: fingerprint the tree (names, sizes, mtimes), read the cache, check its CRCs. The tarball is unpacked into a
temporary folder first (not timed); rounds alternate cold and warm; the table gives the median.

    python benchmarks/cifar_cache.py [--tarball ../shared/datasets/cifar10-jpeg.tar.gz] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from resviz import datasets

DEFAULT_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tarball", type=Path, default=Path(os.environ.get("RESVIZ_CIFAR_JPEG", DEFAULT_TARBALL)))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if not args.tarball.is_file():
        raise SystemExit(f"{args.tarball} not found; pass --tarball PATH to the CIFAR-10 JPEG tarball")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="resviz-cifar-jpeg-") as tmp:
        tree, root = Path(tmp) / "tree", Path(tmp) / "data"
        untar, _ = timed(lambda: tarfile.open(args.tarball).extractall(tree, filter="data"))
        spec = f"imagefolder:{tree}"
        cold, warm = [], []
        for _ in range(args.rounds):
            for cache in root.glob("resviz-imagefolder-*.pt"):
                cache.unlink()
            seconds, data = timed(lambda: datasets.load(spec, root=root, progress=False))
            cold.append(seconds)
            seconds, again = timed(lambda: datasets.load(spec, root=root, progress=False))
            warm.append(seconds)
            assert torch.equal(again.test_images, data.test_images)
        size = sum(c.stat().st_size for c in root.glob("resviz-imagefolder-*.pt"))
        n = len(data.train_labels) + len(data.test_labels)

    print(
        f"{args.tarball.name}: {n:,} images, cache {size / 2**20:.0f} MiB, untar {untar:.1f} s (not counted); "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.1f}; median of {args.rounds}"
    )
    print(f"{'load':<34} {'seconds':>8} {'min..max':>14} {'images/s':>10}")
    for name, t in (("cold (decode + stats + write cache)", cold), ("warm (fingerprint + read cache)", warm)):
        med = statistics.median(t)
        print(f"{name:<34} {med:>8.2f} {f'{min(t):.2f}..{max(t):.2f}':>14} {n / med:>10,.0f}")
    print(f"mean {tuple(round(m, 4) for m in data.mean)}  std {tuple(round(s, 4) for s in data.std)}")


if __name__ == "__main__":
    main()
