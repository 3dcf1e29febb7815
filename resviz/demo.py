"""`resviz demo`: plain vs residual nets, shallow vs deep, on the built-in digits, on the CPU, in minutes.

What it shows (and what it cannot): digits are easy, so every net ends near zero test error given enough
steps; the degradation problem shows up as *slower training* of the deep plain net at equal steps and
learning rate, and as its larger response std (He et al. Fig. 7's direction), not as the 60 % training
error of plain-110 on CIFAR-10. The full CIFAR-10 version is `resviz sweep` on a GPU (README).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from resviz.sweep import format_summary, grid, run_sweep
from resviz.train import TrainConfig

# Fair comparison: the same data, steps, batch, learning-rate schedule (with the paper's warm-up for every
# net, so the deep plain net is not simply blown up by lr 0.1) and width for all four nets.
DEMO = TrainConfig(
    dataset="digits", width=8, steps=400, batch_size=64, lr=0.1, warmup="on", warmup_steps=40,
    log_every=20, eval_every=40, checkpoint_every=40, record_every=10, eval_batch_size=360, device="cpu",
)
DEMO_DEPTHS = (8, 44)
SMOKE = dataclasses.replace(DEMO, steps=20, log_every=10, eval_every=10, checkpoint_every=20, record_every=5)
SMOKE_DEPTHS = (8, 14)


def demo_configs(smoke: bool = False, root: str = "data") -> list[TrainConfig]:
    base = dataclasses.replace(SMOKE if smoke else DEMO, root=root)
    return grid(base, depths=SMOKE_DEPTHS if smoke else DEMO_DEPTHS, archs=("plain", "resnet"))


def run_demo(out: str | Path = "runs/demo", *, smoke: bool = False, root: str = "data",
             figures: str | Path | None = None, formats=("html", "png"), progress: bool = True) -> dict:
    """Train the four demo nets into `out`, then write the two paper-style figures. Returns what was written."""
    from resviz import export, plots, runs

    out = Path(out)
    # two runs at a time, one thread each: small convs gain little from a second thread, a lot from a second run
    workers = 1 if smoke else max(1, min(2, os.cpu_count() or 1))
    table = run_sweep(demo_configs(smoke, root), out, workers=workers, progress=progress)
    runset = runs.load(out)
    figs = {
        "training_curves": plots.plot_training_curves(runset.metrics),
        "response_std": plots.plot_response_std(runset.stats),
    }
    paths = export.export(list(figs.values()), Path(figures) if figures else out / "figures", formats=formats,
                          names=list(figs))
    return {"summary": table, "figures": paths, "text": format_summary(table)}
