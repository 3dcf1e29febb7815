"""Training speed of resviz's loop, on CPU or GPU; prints markdown tables.

Sections (--sections, comma-separated; default a,b,c,d):
  a  images/s of `resviz.train.train` itself for each of --depths at --batch, recording every --record-every
     steps, with the --best switches: the median over logging intervals after the warm-up (the loop's own
     images_per_s column), peak CUDA memory, and on CUDA the fraction of the H100 memory-bandwidth bound
     (performance.md section 2: train MB/img eager/fused at 3 TB/s).
  b  the ablation, one process, rounds interleaved: eager fp32 -> + channels_last -> + bf16 autocast ->
     + cudnn.benchmark -> + torch.compile -> + mode="reduce-overhead" (CUDA graphs). Each variant runs
     resviz's training step (`resviz.train.forward_backward`, `DeviceLoader.batch`, `Recorder.end_step`, SGD) on its
     own copy of the same initial model; the table gives images/s (median over rounds) and the paired
     speed-up over the baseline (median over rounds of the per-round ratio).
  c  our loop (the --best switches, recording every --record-every) vs the usual loop of
     benchmarks/reference_loop.py (DataLoader + PIL transforms in --workers processes, eager fp32, `.item()`
     every batch, no recording): same model, same images, same steps per round, rounds interleaved.
  d  recording overhead with the --best switches: Recorder off / every=20 / every=1, interleaved; on CUDA
     the timed steps run under torch.cuda.set_sync_debug_mode("error") (a hidden sync is reported).
  full  `train` on the whole recipe (--full-steps at batch 128, ResNet --full-depth, --best switches): wall
     seconds including data loading, compilation and evaluations.

Images: sections a and full train on --dataset (default "digits": speed does not depend on the pixels; use
cifar10 where it is on disk); b, c and d use --images random uint8 images of 32x32 (CIFAR-10's size: 50,000).
Timing: wall clock (`time.perf_counter`), the device drained before and after each timed chunk.

    python benchmarks/train_speed.py                                   # CUDA: full sizes
    python benchmarks/train_speed.py --sections full                   # ResNet-56, 64k steps, end to end
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --device cpu --threads 1 --depths 20 --depth 20 \\
        --steps 10 --warmup 10 --rounds 2 --images 2000 --record-every 5 --workers 2   # CPU smoke (minutes)
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_loop import ReferenceLoop, reference_loader, timed  # noqa: E402

from resviz.datasets import resolve_device  # noqa: E402
from resviz.models import cifar_resnet  # noqa: E402
from resviz.probes import Recorder  # noqa: E402
from resviz.loader import DeviceLoader  # noqa: E402
from resviz.train import TrainConfig, train  # noqa: E402
from resviz.train.speed import CUDAGRAPH_MODES, compile_model, forward_backward  # noqa: E402

# /work/shared/notes/performance.md, section 2 (own traffic model, bf16): training traffic per image, MB, with
# eager kernels / with BN, ReLU and the residual add fused; the bound is the H100's ~3 TB/s device copy.
TRAIN_MB_PER_IMAGE = {20: (10.5, 6.1), 32: (17.0, 9.9), 44: (23.6, 13.6), 56: (30.1, 17.4), 110: (59.5, 34.5),
                      1202: (654.0, 379.0)}
H100_BYTES_PER_S = 3.0e12
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SWITCHES = ("channels_last", "amp", "cudnn", "compile", "reduce-overhead", "max-autotune")
ABLATION = (
    ("eager fp32", dict()),
    ("+ channels_last", dict(channels_last=True)),
    ("+ bf16 autocast", dict(channels_last=True, amp=True)),
    ("+ cudnn.benchmark", dict(channels_last=True, amp=True, cudnn_benchmark=True)),
    ("+ torch.compile", dict(channels_last=True, amp=True, cudnn_benchmark=True, compile=True)),
    ("+ reduce-overhead", dict(channels_last=True, amp=True, cudnn_benchmark=True, compile=True,
                               compile_mode="reduce-overhead")),
)


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default="a,b,c,d", help="comma-separated: a,b,c,d,full")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--depths", default="20,32,44,56,110", help="section a: comma-separated depths")
    p.add_argument("--depth", type=int, default=56, help="sections b, c, d: the depth")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--record-every", type=int, default=20)
    p.add_argument("--steps", type=int, default=200, help="timed steps per variant per round (a: in total)")
    p.add_argument("--warmup", type=int, default=40, help="untimed steps first (compiling, CUDA-graph capture)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (b, c, d)")
    p.add_argument("--best", default="channels_last,amp,cudnn,compile,reduce-overhead" if cuda else "",
                   help=f"switches for a, c, d and full, comma-separated from {', '.join(SWITCHES)}")
    p.add_argument("--no-compile", action="store_true", help="section b: leave out the compiled variants")
    p.add_argument("--images", type=int, default=50_000, help="random uint8 images for b, c, d")
    p.add_argument("--workers", type=int, default=4, help="section c: DataLoader workers of the reference loop")
    p.add_argument("--dataset", default="digits", help="sections a and full: a resviz dataset spec")
    p.add_argument("--root", default="data", help="where --dataset lives")
    p.add_argument("--full-depth", type=int, default=56)
    p.add_argument("--full-steps", type=int, default=64_000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


def best_switches(text: str) -> dict:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SWITCHES]
    if bad:
        raise SystemExit(f"--best: unknown switch(es) {bad}; use {', '.join(SWITCHES)}")
    mode = "max-autotune" if "max-autotune" in names else "reduce-overhead" if "reduce-overhead" in names else "default"
    return dict(channels_last="channels_last" in names, amp="amp" in names, cudnn_benchmark="cudnn" in names,
                compile="compile" in names or mode != "default", compile_mode=mode)


def describe(switches: dict) -> str:
    on = [k for k in ("channels_last", "amp", "cudnn_benchmark") if switches.get(k)]
    if switches.get("compile"):
        on.append(f"compile({switches.get('compile_mode', 'default')})")
    return "+".join(on) or "eager fp32"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_note() -> str:
    return "load average " + "/".join(f"{v:.1f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------------- resviz's step
class LoopVariant:
    """resviz's training step for one config (the body of `train`'s loop between sync boundaries)."""

    def __init__(self, name: str, config: TrainConfig, images, labels, device, record: bool = True):
        self.name, self.config, self.device = name, config, device
        torch.manual_seed(config.seed)  # the same initial weights in every variant
        self.model = cifar_resnet(config.depth, width=config.width).to(device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.stream = DeviceLoader(images, labels, batch_size=config.batch_size, train=True, mean=CIFAR_MEAN,
                                   std=CIFAR_STD, device=device, seed=config.seed, augment=config.augment,
                                   channels_last=config.channels_last)  # as train() makes it
        self.rec = Recorder(self.model, every=config.record_every) if record else None
        self.call = self.model
        self.cudagraphs = config.compile and config.compile_mode in CUDAGRAPH_MODES and device.type == "cuda"
        self.step_no = 0
        self.loss_sum = torch.zeros((), device=device)
        self.wrong_sum = torch.zeros((), device=device)
        self.rates: list[float] = []  # images/s per timed chunk
        self.sync_error = ""

    def __enter__(self):
        if self.rec is not None:
            self.rec.__enter__()
        if self.config.compile:  # after the Recorder: its hooks go into the graph
            self.call = compile_model(self.model, self.config.compile_mode)
        return self

    def __exit__(self, *exc):
        if self.rec is not None:
            self.rec.__exit__(*exc)

    def run(self, steps: int) -> None:
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.config.cudnn_benchmark
        for _ in range(steps):
            x, y = self.stream.batch(self.step_no)
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            logits, loss = forward_backward(self.call, x, y, amp=self.config.amp, device=self.device)
            if self.rec is not None:
                self.rec.end_step(self.step_no)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_sum += loss.detach() * len(y)
            self.wrong_sum += (logits.detach().argmax(1) != y).sum()
            self.step_no += 1

    def chunk(self, steps: int, sync_check: bool = False) -> float:
        """Time `steps` steps (images/s); with sync_check on CUDA, under set_sync_debug_mode("error")."""
        check = sync_check and self.device.type == "cuda" and not self.sync_error
        sync(self.device)
        t0 = time.perf_counter()
        try:
            if check:
                torch.cuda.set_sync_debug_mode("error")
            self.run(steps)
        except RuntimeError as err:
            if not check or "synchroniz" not in str(err):
                raise
            self.sync_error = str(err).splitlines()[0]  # report it, and time the rest without the check
            torch.cuda.set_sync_debug_mode(0)
            sync(self.device)
            return self.chunk(steps)
        finally:
            if check:
                torch.cuda.set_sync_debug_mode(0)
        sync(self.device)
        rate = steps * self.config.batch_size / (time.perf_counter() - t0)
        self.rates.append(rate)
        return rate

    def boundary(self) -> float:
        """What `train` does at a log boundary: read the loss back (a sync), drain the Recorder."""
        loss = self.loss_sum.item()
        self.loss_sum.zero_()
        self.wrong_sum.zero_()
        if self.rec is not None:
            self.rec.drain()
        return loss


def random_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # (N, 3, 32, 32)
    return images, torch.randint(0, 10, (n,), generator=g)


def interleave(variants: list, rounds: int, steps: int, warmup: int, sync_check: bool = False) -> None:
    """Warm every variant up, then `rounds` rounds of `steps` timed steps each, in a rotating order."""
    for v in variants:
        v.run(warmup) if isinstance(v, ReferenceLoop) else (v.run(warmup), v.boundary())
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            if isinstance(v, ReferenceLoop):
                v.rates.append(steps * v.batch_size / timed(v.run, steps, v.device))
            else:
                v.chunk(steps, sync_check)
                v.boundary()


def paired(variant, base) -> float:
    return statistics.median(a / b for a, b in zip(variant.rates, base.rates))


def reset_compiler() -> None:
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 32)  # several models share classes


# ------------------------------------------------------------------------------------- sections
def section_depths(args, device, best: dict) -> None:
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    interval = args.record_every  # one recording step per logging interval
    skip = math.ceil(args.warmup / interval)
    total = interval * (skip + max(1, math.ceil(args.steps / interval)))
    print(f"\n## (a) images/s of resviz.train.train, batch {args.batch}, recording every {args.record_every}, "
          f"{describe(best)}, {args.dataset}, {device}\n")
    print(f"median over {total // interval - skip} logging intervals of {interval} steps after {skip * interval} "
          f"warm-up steps; {load_note()}\n")
    bound = device.type == "cuda"
    head = "| depth | images/s | ms/step | first interval s (warm-up, compile) | peak MiB |"
    head += " of bound eager | of bound fused |" if bound else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for depth in depths:
        reset_compiler()
        config = TrainConfig(dataset=args.dataset, root=args.root, depth=depth, batch_size=args.batch, steps=total,
                             log_every=interval, eval_every=total, checkpoint_every=total,
                             record_every=args.record_every, progress=False, device=str(device), **best)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with tempfile.TemporaryDirectory() as out:
            result = train(config, out)
            metrics = pd.read_parquet(result.folder / "metrics.parquet")
        if result.status != "done":
            print(f"| {depth} | {result.status}: {result.reason} |")
            continue
        rate = float(metrics["images_per_s"].iloc[skip:].median())
        first = float(metrics["seconds"].iloc[0])
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f}" if device.type == "cuda" else "—"
        row = f"| {depth} | {rate:,.0f} | {1000 * args.batch / rate:.2f} | {first:.1f} | {peak} |"
        if bound:
            mb = TRAIN_MB_PER_IMAGE.get(depth)
            fr = [f"{rate / (H100_BYTES_PER_S / (m * 1e6)):.1%}" for m in mb] if mb else ["—", "—"]
            row += f" {fr[0]} | {fr[1]} |"
        print(row, flush=True)
    if bound:
        print("\nbound = 3 TB/s / (train MB per image), performance.md section 2: "
              + ", ".join(f"ResNet-{d} {H100_BYTES_PER_S / (e * 1e6):,.0f}/{H100_BYTES_PER_S / (f * 1e6):,.0f}"
                          for d, (e, f) in TRAIN_MB_PER_IMAGE.items()) + " img/s (eager/fused)")


def section_ablation(args, device) -> None:
    reset_compiler()
    images, labels = random_images(args.images)
    base = TrainConfig(depth=args.depth, batch_size=args.batch, record_every=args.record_every, seed=0)
    chosen = [(n, s) for n, s in ABLATION if not (args.no_compile and s.get("compile"))]
    variants = [LoopVariant(n, dataclasses.replace(base, **{"cudnn_benchmark": False, **s}), images, labels, device)
                for n, s in chosen]
    print(f"\n## (b) ablation: ResNet-{args.depth}, batch {args.batch}, recording every {args.record_every}, "
          f"{device}\n")
    print(f"{args.rounds} interleaved rounds of {args.steps} steps after {args.warmup} warm-up steps; "
          f"{load_note()} (before)\n")
    for v in variants:
        v.__enter__()
    try:
        t0 = time.perf_counter()
        interleave(variants, args.rounds, args.steps, args.warmup)
        seconds = time.perf_counter() - t0
    finally:
        for v in reversed(variants):
            v.__exit__(None, None, None)
    print("| variant | images/s | min..max | ms/step | speed-up vs eager fp32 (paired) | vs previous row |")
    print("|---|---|---|---|---|---|")
    for i, v in enumerate(variants):
        med = statistics.median(v.rates)
        prev = f"{paired(v, variants[i - 1]):.2f}x" if i else "—"
        print(f"| {v.name} | {med:,.0f} | {min(v.rates):,.0f}..{max(v.rates):,.0f} | "
              f"{1000 * args.batch / med:.2f} | {paired(v, variants[0]):.2f}x | {prev} |")
    print(f"\n{seconds:.0f} s in all (incl. warm-up and compiling); {load_note()} (after)")


def section_reference(args, device, best: dict) -> None:
    reset_compiler()
    images, labels = random_images(args.images)
    config = TrainConfig(depth=args.depth, batch_size=args.batch, record_every=args.record_every, seed=0, **best)
    ours = LoopVariant(f"resviz loop ({describe(best)}, recording every {args.record_every})", config, images,
                       labels, device)
    torch.manual_seed(0)
    loader = reference_loader(images, labels, mean=CIFAR_MEAN, std=CIFAR_STD, batch_size=args.batch,
                              workers=args.workers, pin_memory=device.type == "cuda")
    ref = ReferenceLoop(cifar_resnet(args.depth), loader, device,
                        name=f"reference (DataLoader+PIL, {args.workers} workers, eager fp32, .item() per batch)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # akamaster's trainer.py sets it
    print(f"\n## (c) resviz loop vs the usual loop: ResNet-{args.depth}, batch {args.batch}, {device}\n")
    print(f"{args.rounds} interleaved rounds of {args.steps} steps after {args.warmup} warm-up steps, "
          f"{args.images:,} images; {load_note()} (before)\n")
    with ours:
        interleave([ours, ref], args.rounds, args.steps, args.warmup)
    print("| loop | images/s | min..max | ms/step |")
    print("|---|---|---|---|")
    for v in (ours, ref):
        med = statistics.median(v.rates)
        print(f"| {v.name} | {med:,.0f} | {min(v.rates):,.0f}..{max(v.rates):,.0f} | {1000 * args.batch / med:.2f} |")
    print(f"\nratio (paired, median over rounds): **{paired(ours, ref):.2f}x**; {load_note()} (after)")


def section_recording(args, device, best: dict) -> None:
    reset_compiler()
    images, labels = random_images(args.images)
    base = TrainConfig(depth=args.depth, batch_size=args.batch, seed=0, **best)
    variants = [LoopVariant("off", base, images, labels, device, record=False),
                LoopVariant(f"every={args.record_every}", dataclasses.replace(base, record_every=args.record_every),
                            images, labels, device),
                LoopVariant("every=1", dataclasses.replace(base, record_every=1), images, labels, device)]
    checked = device.type == "cuda"
    print(f"\n## (d) recording overhead: ResNet-{args.depth}, batch {args.batch}, {describe(best)}, {device}"
          + (", timed steps under set_sync_debug_mode('error')" if checked else "") + "\n")
    print(f"{args.rounds} interleaved rounds of {args.steps} steps after {args.warmup} warm-up steps; "
          f"{load_note()} (before)\n")
    for v in variants:
        v.__enter__()
    try:
        interleave(variants, args.rounds, args.steps, args.warmup, sync_check=checked)
    finally:
        for v in reversed(variants):
            v.__exit__(None, None, None)
    print("| recording | images/s | ms/step | step time vs off (paired) | host syncs in timed steps |")
    print("|---|---|---|---|---|")
    for v in variants:
        med = statistics.median(v.rates)
        syncs = ("none" if not v.sync_error else v.sync_error[:80]) if checked else "not checked (CPU)"
        print(f"| {v.name} | {med:,.0f} | {1000 * args.batch / med:.2f} | {1 / paired(v, variants[0]):.3f}x | "
              f"{syncs} |")
    print(f"\n{load_note()} (after)")


def section_full(args, device, best: dict) -> None:
    reset_compiler()
    config = TrainConfig(dataset=args.dataset, root=args.root, depth=args.full_depth, steps=args.full_steps,
                         batch_size=args.batch, progress=False, device=str(device), **best)
    print(f"\n## (full) ResNet-{args.full_depth}, {args.full_steps:,} steps at batch {args.batch}, "
          f"{describe(best)}, {args.dataset}, {device}; {load_note()} (before)\n")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = train(config, out)
        wall = time.perf_counter() - t0
    print("| status | wall s (incl. load, compile, evaluations) | training s | test error |")
    print("|---|---|---|---|")
    print(f"| {result.status} | {wall:.1f} | {result.seconds:.1f} | {100 * result.test_error:.2f} % |")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    best = best_switches(args.best)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# resviz training speed: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} cores; {load_note()}")
    for s in sections:
        if s == "a":
            section_depths(args, device, best)
        elif s == "b":
            section_ablation(args, device)
        elif s == "c":
            section_reference(args, device, best)
        elif s == "d":
            section_recording(args, device, best)
        elif s == "full":
            section_full(args, device, best)
        else:
            raise SystemExit(f"--sections: unknown section {s!r}; use a, b, c, d or full")


if __name__ == "__main__":
    main()
