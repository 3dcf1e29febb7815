"""Training-batch throughput: resviz's DeviceLoader against torchvision DataLoader + PIL transforms.

Both produce the same thing from the same uint8 images: a random 32x32 crop of the 4-pixel zero-padded image,
a random horizontal flip, float conversion and per-channel normalisation, in batches of --batch-size, in a fresh
random order each epoch. Variants run interleaved, one epoch each per round, after one warm-up epoch each
(DataLoader workers are persistent, so their start-up is not counted); each measurement repeats whole epochs
for at least --min-seconds; the table gives the median over rounds.

    python benchmarks/loader.py                       # 20,000 random images, cpu
    python benchmarks/loader.py --dataset imagefolder:/tmp/cifar10-jpeg --device cuda
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from resviz import datasets
from resviz.loader import DeviceLoader


class PILImages(Dataset):
    """The same uint8 images as PIL images through torchvision's classic CIFAR transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3) as PIL expects
        self.labels = labels.numpy()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process plus the given child processes, from /proc."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _worker_pids(loader) -> list[int]:
    it = getattr(loader, "_iterator", None)  # persistent workers live on the DataLoader's iterator
    return [w.pid for w in getattr(it, "_workers", [])]


def throughput(make_batches, device: torch.device, min_seconds: float, loader=None) -> tuple[float, float]:
    """(images/s, CPU µs per image) over whole epochs (at least one, and at least `min_seconds`), every batch on
    `device` and reduced there (so nothing is skipped); the clock stops after a device sync. CPU time counts
    this process and the DataLoader's workers: unlike images/s it barely changes when others load the machine."""
    sink = torch.zeros((), device=device)
    images = 0
    _sync(device)
    pids = _worker_pids(loader) if loader is not None else []
    cpu0, start = _cpu_seconds(pids), time.perf_counter()
    while True:
        for x, y in make_batches():
            x = x.to(device, non_blocking=True)
            sink += x[:, 0, 0, 0].sum() + y.to(device, non_blocking=True).sum()
            images += len(y)
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed, (_cpu_seconds(pids) - cpu0) / images * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="a resviz dataset spec (default: random uint8 images)")
    p.add_argument("--root", default="data")
    p.add_argument("--images", type=int, default=20_000, help="random images when no --dataset (default 20,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", default="2,0", help="DataLoader num_workers values to compare (default 2,0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--min-seconds", type=float, default=2.0, help="each measurement repeats epochs this long")
    p.add_argument("--threads", type=int, help="torch intra-op threads of this process (default: torch's)")
    args = p.parse_args()

    device = datasets.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dataset:
        data = datasets.load(args.dataset, root=args.root)
        images, labels, mean, std = data.train_images, data.train_labels, data.mean, data.std
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (args.images,), generator=g)
        mean, std = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
    n = len(labels)

    variants: dict[str, tuple] = {}  # name -> (make an epoch's iterator, DataLoader or None)
    ours = DeviceLoader(images, labels, batch_size=args.batch_size, train=True, mean=mean, std=std, device=device)
    variants["resviz DeviceLoader"] = (lambda: iter(ours), None)
    pil = PILImages(images, labels, mean, std)
    loaders = []
    for w in [int(v) for v in args.workers.split(",")]:
        dl = DataLoader(
            pil, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=w,
            persistent_workers=w > 0, pin_memory=device.type == "cuda",
        )
        loaders.append(dl)
        variants[f"DataLoader+PIL, workers={w}"] = (lambda dl=dl: iter(dl), dl)

    for make, dl in variants.values():  # warm-up: start workers, fill caches
        throughput(make, device, 0.0, dl)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (make, dl) in variants.items():
            r, c = throughput(make, device, args.min_seconds, dl)
            rates[name].append(r)
            cpu[name].append(c)

    median = {k: statistics.median(v) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    best_dl = max(v for k, v in median.items() if k.startswith("DataLoader"))
    least_cpu_dl = min(v for k, v in cpu_med.items() if k.startswith("DataLoader"))
    print(
        f"{n:,} images, batch {args.batch_size}, device {device}, {args.rounds} interleaved rounds (median), "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<28} {'images/s':>9} {'min..max':>17} {'speed-up':>9} {'CPU µs/img':>11} {'CPU saving':>11}")
    for name, r in rates.items():
        print(
            f"{name:<28} {median[name]:>9,.0f} {f'{min(r):,.0f}..{max(r):,.0f}':>17} {median[name] / best_dl:>8.2f}x "
            f"{cpu_med[name]:>11.1f} {least_cpu_dl / cpu_med[name]:>10.2f}x"
        )
    print("speed-up: images/s over the fastest DataLoader; CPU saving: the thriftiest DataLoader's CPU time per "
          "image over this one's")
    del loaders


if __name__ == "__main__":
    main()
