"""Issue 12's numbers, printed as tables (the lead copies them into BENCHMARKS.md).

    python benchmarks/science.py growth [--seeds 8]          unnormalised ResNet: E[x²] growth per block at init
    python benchmarks/science.py demo [--seeds 3] [--steps N] [--width W] [--depths 8,44]
                                                             response_std_eval (resviz.measure) of the demo's nets
                                                             at their final checkpoint, per seed, plain vs ResNet
    python benchmarks/science.py shattered [--seeds 4]       Balduzzi et al.'s 1-D lag-1 autocorrelation vs depth

Every number says its aggregation: per seed, then mean ± std (sample std, ddof 1) and min..max over seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spread(values) -> str:
    v = np.asarray(values, dtype=float)
    sd = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.3f} ± {sd:.3f} (min {v.min():.3f}, max {v.max():.3f}, n={len(v)})"


def growth(seeds: int, depths=(20, 56)) -> None:
    """growth_check's measured factor per seed (each seed's frame alone), for the unnormalised ResNet and plain net."""
    from resviz.analysis.signal import growth_check, signal_at_init

    print(f"## Growth of E[x²] per block at init (64 N(0,1) images 32×32, width 16, seeds 0..{seeds - 1})\n")
    print("| depth | net | per seed | mean ± std (min, max, n) | growth_check on all seeds pooled |")
    print("|---|---|---|---|---|")
    for depth in depths:
        for variant in ("ResNet, no norm", "plain, no norm"):
            frame = signal_at_init(depth, (variant,), seeds=seeds)
            per_seed = [float(growth_check(frame[frame["seed"] == s])["measured"].iloc[0]) for s in range(seeds)]
            pooled = float(growth_check(frame)["measured"].iloc[0])
            shown = ", ".join(f"{v:.2f}" for v in per_seed)
            print(f"| {depth} | {variant} | {shown} | {_spread(per_seed)} | {pooled:.3f} |")
    print()


def _final_eval_stats(folder: Path, test_images, sub) -> dict:
    from resviz.evaluate import load_run_model
    from resviz.measure import heldout_response_std

    model, mean, std = load_run_model(folder)
    frame = heldout_response_std(model, test_images[sub], mean, std)
    stats = pd.read_parquet(folder / "stats.parquet")
    train_mode = stats[stats["metric"].astype(str) == "response_std"]
    train_mode = train_mode[train_mode["step"] == train_mode["step"].max()]
    return {"eval_mean": float(frame["value"].mean()), "eval_median": float(frame["value"].median()),
            "train_mode_mean": float(train_mode["value"].mean())}


def demo(seeds: int, steps: int | None, width: int | None, depths: tuple[int, ...]) -> None:
    """Train the demo's nets (its settings unless overridden) for each seed; Fig. 7's eval-mode number per run."""
    from resviz import datasets
    from resviz.demo import DEMO
    from resviz.measure import HELDOUT_IMAGES, fixed_subset
    from resviz.sweeps import grid, run_sweep

    base = DEMO
    if steps is not None:
        scale = steps / base.steps
        base = dataclasses.replace(base, steps=steps, warmup_steps=max(1, round(base.warmup_steps * scale)),
                                   log_every=max(1, steps // 20), eval_every=max(1, steps // 10),
                                   checkpoint_every=max(1, steps // 10), record_every=max(1, steps // 40))
    if width is not None:
        base = dataclasses.replace(base, width=width)
    configs = grid(base, depths=depths, archs=("plain", "resnet"), seeds=tuple(range(seeds)))
    data = datasets.load(base.dataset, root=base.root, progress=False)
    sub = fixed_subset(len(data.test_images), HELDOUT_IMAGES)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        table = run_sweep(configs, out, workers=2, progress=False)
        for c in configs:
            row = table[table["run"] == c.run_id].iloc[0].to_dict()
            rows.append(dict(arch=c.arch, depth=c.depth, seed=c.seed, test_error=row.get("test_error", np.nan),
                             **_final_eval_stats(Path(out) / c.run_id, data.test_images, sub)))
    wall = time.perf_counter() - t0
    frame = pd.DataFrame(rows)
    print("## Fig. 7 measured as the paper does: response_std_eval at the final checkpoint\n")
    print(f"Settings: digits, width {base.width}, {base.steps} steps, batch {base.batch_size}, lr {base.lr} "
          f"(warm-up {base.warmup_steps} steps, milestones {base.scaled_milestones}), depths {depths}, seeds "
          f"0..{seeds - 1}; eval mode on {HELDOUT_IMAGES} fixed test images (resviz.measure.fixed_subset). "
          f"Mean over the net's norm layers, per run. Wall {wall:.0f} s for {len(configs)} runs (2 workers).\n")
    print("| depth | net | eval-mode mean per seed | eval-mode mean ± std (min, max, n) | train-mode mean "
          "(last record) | test error |")
    print("|---|---|---|---|---|---|")
    for (depth, arch), g in frame.groupby(["depth", "arch"]):
        shown = ", ".join(f"{v:.3f}" for v in g["eval_mean"])
        print(f"| {depth} | {arch} | {shown} | {_spread(g['eval_mean'])} | {_spread(g['train_mode_mean'])} | "
              f"{_spread(g['test_error'])} |")
    print("\n| depth | plain − ResNet, eval-mode mean, per seed (paired) | mean ± std (min, max) | "
          "seeds with plain > ResNet |")
    print("|---|---|---|---|")
    for depth, g in frame.groupby("depth"):
        wide = g.pivot(index="seed", columns="arch", values="eval_mean")
        diff = (wide["plain"] - wide["resnet"]).to_numpy()
        shown = ", ".join(f"{v:+.3f}" for v in diff)
        print(f"| {depth} | {shown} | {_spread(diff)} | {int((diff > 0).sum())}/{len(diff)} |")
    print()


def shattered(seeds: int) -> None:
    from resviz.analysis.shattered import shattering_1d_vs_depth

    depths = (1, 2, 4, 8, 16, 24, 50)
    frame = shattering_1d_vs_depth(depths=depths, seeds=seeds)
    lag1 = frame[frame["lag"] == 1]
    print(f"## Shattered gradients as Balduzzi et al. measured them: 1-D input, 256 points on [-2, 2], fully "
          f"connected width 200, lag-1 autocorrelation of d out / d x, mean ± std over seeds 0..{seeds - 1}\n")
    print("| net | " + " | ".join(f"depth {d}" for d in depths) + " |")
    print("|---|" + "---|" * len(depths))
    for (arch, norm), g in lag1.groupby(["arch", "norm"]):
        cells = []
        for d in depths:
            v = g[g["depth"] == d]["autocorrelation"].to_numpy()
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}")
        print(f"| {arch}, {norm} | " + " | ".join(cells) + " |")
    print()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["growth", "demo", "shattered"])
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depths", default="8,44")
    args = p.parse_args(argv)
    if args.what == "growth":
        growth(args.seeds or 8)
    elif args.what == "demo":
        demo(args.seeds or 3, args.steps, args.width, tuple(int(d) for d in args.depths.split(",")))
    else:
        shattered(args.seeds or 4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
