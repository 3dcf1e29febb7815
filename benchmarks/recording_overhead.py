"""Step time of a model with the Recorder off, every=1 and every=20, measured side by side.

Models (--model): "cifar" (resviz's CIFAR ResNet of --depth on 32x32 images, the default), "timm_resnet50"
(`timm.create_model("resnet50")`, random init, --image-size images, 10 classes), "gpt2_tiny" (Hugging Face
`GPT2LMHeadModel` from a tiny random config: 4 layers, 128 features, 4 heads, 256-token vocabulary, sequences of
--seq tokens, next-token loss). The Recorder takes its default metrics on each, through the block-spec registry.

One process, one model per variant (same initial weights), rounds interleaved (off, every=1, every=20 in a
rotating order) so that load from other processes hits all variants alike. Each step is forward + backward +
Recorder.end_step + SGD step + zero_grad. Reported: the median per-step time of each variant, its ratio of
medians to "off", and the paired ratio: per round, the variant's mean step time over "off"'s in the same round,
median over rounds (robust to load that drifts between rounds). every=20 is amortised: (19 * its non-recording
step + 1 * a recording step) / 20; a recording step does the same work as an every=1 step, so every=1 stands
in for it (a short run holds only a few every=20 recording steps). Then the host memory of the table:
frame().memory_usage(deep=True) of the every=1 run, divided by its recorded steps, times 1000 (rows per step
are fixed, so it scales linearly).

    python benchmarks/recording_overhead.py                      # ResNet-56, batch 128, CPU, 1 thread (~2 min)
    python benchmarks/recording_overhead.py --repeats 3 --depth 20
    python benchmarks/recording_overhead.py --device cuda        # with torch.cuda.set_sync_debug_mode("error")
    python benchmarks/recording_overhead.py --model timm_resnet50 --batch 8 --image-size 64
    python benchmarks/recording_overhead.py --model gpt2_tiny --batch 8 --seq 128
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

from resviz.models import cifar_resnet
from resviz.probes import Recorder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar", choices=MODELS, help="what to record (see above)")
    p.add_argument("--depth", type=int, default=56, help="depth of the cifar model")
    p.add_argument("--image-size", type=int, default=64, help="image side for timm_resnet50")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence for gpt2_tiny")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics for the Recorder (default: its default metrics)")
    p.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


MODELS = ("cifar", "timm_resnet50", "gpt2_tiny")


def build(args, device: str):
    """(model, inputs, targets, loss function, title) for --model."""
    g = torch.Generator().manual_seed(0)
    if args.model == "gpt2_tiny":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=256, n_positions=args.seq, n_embd=128, n_layer=4, n_head=4,
                            bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(config).to(device)
        tokens = torch.randint(0, 256, (args.batch, args.seq + 1), generator=g).to(device)

        def lm_loss(model, x, y):  # next-token cross-entropy
            return F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())

        return model, tokens[:, :-1], tokens[:, 1:], lm_loss, f"GPT-2 tiny (4x128), {args.seq} tokens"
    if args.model == "timm_resnet50":
        import timm

        model = timm.create_model("resnet50", num_classes=10).to(device)
        size, title = args.image_size, f"timm resnet50, {args.image_size}x{args.image_size} images"
    else:
        model, size, title = cifar_resnet(args.depth).to(device), 32, f"ResNet-{args.depth}"
    x = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    return model, x, y, lambda model, x, y: F.cross_entropy(model(x), y), title


class Variant:
    def __init__(self, name: str, model, every: int | None, device: str, loss_fn, metrics=None):
        self.name, self.model, self.every, self.device, self.loss_fn = name, model, every, device, loss_fn
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.rec = Recorder(model, every=every, metrics=metrics) if every else None
        self.step_no = 0
        self.times: list[tuple[int, bool, float]] = []  # (round, recording step?, seconds)

    def step(self, x, y, timed: int | None) -> None:
        cuda = self.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
        recording = self.rec is not None and self.rec.recording
        t0 = time.perf_counter() if cuda else time.process_time()
        with sync_guard(cuda):
            loss = self.loss_fn(self.model, x, y)
            loss.backward()
            if self.rec is not None:
                self.rec.end_step(self.step_no)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter() if cuda else time.process_time()
        self.step_no += 1
        if timed is not None:
            self.times.append((timed, recording, t1 - t0))

    def median(self, recording: bool | None = None) -> float:
        ts = [t for _, r, t in self.times if recording is None or r == recording]
        return statistics.median(ts) if ts else float("nan")

    def round_means(self, recording: bool | None = None) -> dict[int, float]:
        by_round: dict[int, list[float]] = {}
        for k, r, t in self.times:
            if recording is None or r == recording:
                by_round.setdefault(k, []).append(t)
        return {k: statistics.fmean(ts) for k, ts in by_round.items()}


def paired_ratio(variant: dict[int, float], base: dict[int, float]) -> float:
    ratios = [variant[k] / base[k] for k in variant if k in base]
    return statistics.median(ratios) if ratios else float("nan")


@contextlib.contextmanager
def sync_guard(cuda: bool):
    """On CUDA, turn any host synchronisation inside the step into an error."""
    if not cuda:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    base, x, y, loss_fn, title = build(args, device)
    metrics = args.metrics.split(",") if args.metrics else None
    variants = [
        Variant("off", base, None, device, loss_fn),
        Variant("every=1", copy.deepcopy(base), 1, device, loss_fn, metrics),
        Variant("every=20", copy.deepcopy(base), 20, device, loss_fn, metrics),
    ]
    with contextlib.ExitStack() as stack:
        for v in variants:
            if v.rec is not None:
                stack.enter_context(v.rec)
        for v in variants:
            for _ in range(args.warmup):
                v.step(x, y, timed=None)
        t_start = time.perf_counter()
        for r in range(args.repeats):
            order = variants[r % 3 :] + variants[: r % 3]
            for v in order:
                for _ in range(args.steps):
                    v.step(x, y, timed=r)
        wall = time.perf_counter() - t_start
    off, e1, e20 = variants
    base_t, base_rounds = off.median(), off.round_means()
    amortised20 = (19 * e20.median(False) + e1.median()) / 20
    paired1 = paired_ratio(e1.round_means(), base_rounds)
    paired20_off = paired_ratio(e20.round_means(False), base_rounds)
    paired20 = (19 * paired20_off + paired1) / 20
    clock = "wall" if device == "cuda" else "CPU"
    print(f"metrics: {', '.join(variants[1].rec.metrics)}")
    print(
        f"{title}, batch {args.batch}, {device}, {torch.get_num_threads()} thread(s), "
        f"{args.repeats} rounds x {args.steps} steps per variant, {clock} time per step, torch {torch.__version__}"
    )
    print(f"{'variant':<30}{'median ms':>10}{'ratio':>8}{'paired':>8}{'steps':>7}")
    rows = [
        ("off", base_t, 1.0, len(off.times)),
        ("every=1", e1.median(), paired1, len(e1.times)),
        ("every=20 non-recording steps", e20.median(False), paired20_off, sum(1 for _, r, _ in e20.times if not r)),
        ("every=20 amortised", amortised20, paired20, len(e20.times)),
    ]
    for name, t, paired, n in rows:
        print(f"{name:<30}{t * 1e3:>10.1f}{t / base_t:>8.3f}{paired:>8.3f}{n:>7}")
    df = e1.rec.frame()
    recorded = int(df["step"].nunique())
    table_bytes = int(df.memory_usage(deep=True).sum())
    print(
        f"table: {len(df) // max(recorded, 1)} rows per recorded step; {table_bytes / recorded / 1e3:.1f} kB per "
        f"recorded step -> {table_bytes / recorded * 1000 / 1e6:.1f} MB per 1,000 recorded steps "
        f"(from {recorded} steps, {len(df)} rows); timed loop {wall:.0f} s"
    )
    print("load average (1, 5, 15 min): before " + " ".join(f"{v:.2f}" for v in load_before)
          + "; after " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
