"""Recording overhead of resviz against the tools users pick today, side by side in one process, interleaved.

Each tool is used through its own code: fastai's `ActivationStats.hook` on every leaf module with parameters
through `fastai.callback.hook.Hooks` (what `ActivationStats` hooks), TensorBoard's `SummaryWriter.add_histogram` of
every conv / norm / linear output (the usual recipe), `wandb.watch(model, log="all", log_freq=every)` in offline
mode; resviz's `Recorder(model, every=every)` with its default metrics. Models: ResNet-56 (resviz's CIFAR net,
32x32) and a ViT-tiny (timm, 32x32 images, patch 4). Each step: forward + backward + the tool's step call + SGD
step + zero_grad. Rounds interleave the variants in a rotating order; reported per variant: the paired ratio
(per round, its mean step time over "off"'s in the same round, median over rounds). every=1 records each step;
every=20 records one step in 20 (the run covers several recording steps per round).

    python benchmarks/peers.py                           # both models, every 1 and 20, CPU, 1 thread
    python benchmarks/peers.py --models resnet56 --repeats 3 --every 1
    python benchmarks/peers.py --device cuda
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from resviz.models import cifar_resnet
from resviz.probes import Recorder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet56", "vit_tiny"])
    p.add_argument("--every", nargs="+", type=int, default=[1, 20])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tools", nargs="+", default=["resviz", "fastai", "wandb", "tensorboard"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def build(name: str) -> nn.Module:
    if name == "resnet56":
        return cifar_resnet(56)
    if name == "vit_tiny":
        import timm

        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)
    raise SystemExit(f"peers.py: error: model {name!r} is unknown; use resnet56 or vit_tiny")


class Tool:
    """A recording tool attached to one model copy: `start()`, per step `before(step)` / `after(step)`, `stop()`."""

    def __init__(self, kind: str, model: nn.Module, every: int, tmp: str):
        self.kind, self.model, self.every, self.tmp, self.on = kind, model, every, tmp, False
        self.rec = self.hooks = self.writer = None

    def start(self) -> None:
        leaves = [m for m in self.model.modules() if not list(m.children()) and list(m.parameters(recurse=False))]
        if self.kind == "resviz":
            self.rec = Recorder(self.model, every=self.every).__enter__()
        elif self.kind == "fastai":
            from fastai.callback.hook import ActivationStats, Hooks

            stats = ActivationStats(with_hist=False)
            self.hooks = Hooks(leaves, lambda m, i, o: stats.hook(m, i, o) if self.on else None)
        elif self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.tmp, "tb"))
            names = {m: n for n, m in self.model.named_modules()}
            self.handles = [m.register_forward_hook(self._tb_hook(names[m])) for m in leaves]
        elif self.kind == "wandb":
            import wandb

            self.run = wandb.init(mode="offline", dir=self.tmp, project="peers", reinit="finish_previous")
            wandb.watch(self.model, log="all", log_freq=self.every)

    def _tb_hook(self, name: str):
        def hook(module, args, output):
            if self.on:
                self.writer.add_histogram(name, output.detach(), self.step)
        return hook

    def before(self, step: int) -> None:
        self.step, self.on = step, step % self.every == 0

    def after(self, step: int, loss: torch.Tensor) -> None:
        if self.kind == "resviz":
            self.rec.end_step(step)
        elif self.kind == "wandb":
            import wandb

            wandb.log({"loss": float(loss)}, step=step) if step % self.every == 0 else None

    def stop(self) -> None:
        if self.rec is not None:
            self.rec.close()
        if self.hooks is not None:
            self.hooks.remove()
        if self.writer is not None:
            for h in self.handles:
                h.remove()
            self.writer.close()
        if self.kind == "wandb":
            self.run.finish()


def run_variant(model, opt, tool, x, y, steps: int, first: int, cuda: bool) -> float:
    """Mean seconds per step over `steps` steps."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(first, first + steps):
        if tool is not None:
            tool.before(s)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if tool is not None:
            tool.after(s, loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench(name: str, every: int, args, tmp: str) -> dict[str, float]:
    """{variant: paired ratio to "off"} for one model and one recording frequency."""
    torch.manual_seed(0)
    base = build(name).to(args.device)
    x = torch.randn(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    names = ["off", *args.tools]
    models = {v: copy.deepcopy(base) for v in names}
    opts = {v: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for v, m in models.items()}
    tools = {v: (None if v == "off" else Tool(v, models[v], every, tmp)) for v in names}
    for t in tools.values():
        if t is not None:
            t.start()
    cuda = args.device == "cuda"
    times: dict[str, list[float]] = {v: [] for v in names}
    try:
        for v in names:  # warm-up
            run_variant(models[v], opts[v], tools[v], x, y, 2, 0, cuda)
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for v in order:
                times[v].append(run_variant(models[v], opts[v], tools[v], x, y, args.steps, 2 + r * args.steps, cuda))
    finally:
        for t in tools.values():
            if t is not None:
                t.stop()
    off = times["off"]
    return {v: statistics.median(t / o for t, o in zip(times[v], off)) for v in names} | {
        "off_ms": statistics.median(off) * 1e3}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    print(f"device {args.device}, {args.threads} thread(s), batch {args.batch}, {args.repeats} rounds x "
          f"{args.steps} steps per variant; paired ratio of step time to no recording (median over rounds)")
    print("load average (1, 5, 15 min) at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"{'model':<10} {'every':>5} {'off ms':>8} " + " ".join(f"{t:>11}" for t in args.tools))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for every in args.every:
                r = bench(name, every, args, tmp)
                print(f"{name:<10} {every:>5} {r['off_ms']:>8.1f} " + " ".join(f"{r[t]:>10.3f}x" for t in args.tools),
                      flush=True)
    print("load average (1, 5, 15 min) at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
