"""The science numbers that README.md and BENCHMARKS.md quote, each measured into results/<name>.json with the
environment it was measured in (torch build, threads, device, seeds), then written into the documents' marked
blocks from those files: one source. tests/test_science_results.py checks the documents against the files.

    python benchmarks/science.py growth [--seeds 10]        unnormalised nets: E[x²] growth per block at init
    python benchmarks/science.py shattered [--seeds 10]     Balduzzi et al.'s 1-D experiment: autocorrelation
                                                            curves, both BN modes, decay against the paper's rates
    python benchmarks/science.py fig7-effect [--seeds 10]   plain vs ResNet trained side by side, per seed: Fig. 7
                                                            in eval mode on held-out images, clean training error;
                                                            paired plain − ResNet differences with 95 % intervals
    python benchmarks/science.py fig7-akamaster             Fig. 7 on akamaster's checkpoints, the test images named
    python benchmarks/science.py fixup [--seeds 10]         Fixup trained with the official recipe at lr 0.1 / 0.02
    python benchmarks/science.py write                      the documents' blocks from results/*.json

A block in a document is `<!-- results:NAME -->` ... `<!-- /results:NAME -->`; NAME is a key of `BLOCKS`.
Intervals: mean ± t(0.975, n − 1) · sd / √n over seeds (paired where two nets share a seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "results"
DOCUMENTS = (ROOT / "README.md", ROOT / "BENCHMARKS.md")
BLOCK = re.compile(r"<!-- results:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /results:(?P=name) -->", re.S)


# ---- environment, intervals, files -------------------------------------------------------------------------
def environment(device: str = "cpu") -> dict:
    """Where a result was measured: torch build, threads, device, python, machine, date (UTC), git commit."""
    import subprocess

    import torch

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit.stdout.strip() or "unknown"}


def interval(values) -> dict:
    """n, mean, sample sd, and the 95 % t interval of the mean of `values` (e.g. paired differences)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    n = len(v)
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    return {"n": n, "mean": float(v.mean()), "sd": sd, "lo": float(v.mean() - half), "hi": float(v.mean() + half),
            "min": float(v.min()), "max": float(v.max()), "positive": int((v > 0).sum())}


def save(name: str, payload: dict) -> Path:
    from resviz.io import atomic_write_json

    path = RESULTS / f"{name}.json"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(path, payload)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def fmt_interval(i: dict, digits: int = 3, sign: bool = False) -> str:
    """"+0.123 [+0.100, +0.146]" (mean [95 % interval])."""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(i['mean'])} [{f.format(i['lo'])}, {f.format(i['hi'])}]"


def env_line(r: dict) -> str:
    e = r["environment"]
    return (f"torch {e['torch']}, {e['threads']} thread(s), {e['device']}, {e['cpus']} CPUs, {e['date']}, "
            f"commit {e['commit']}")


# ---- growth of E[x²] at init ---------------------------------------------------------------------------------
def growth(seeds: int, depths=(20, 56)) -> dict:
    """growth_check's measured factor per seed (each seed's frame alone) for the unnormalised ResNet and plain net,
    with the mean-field prediction."""
    from resviz.analysis.signal import growth_check, signal_at_init

    rows = []
    for depth in depths:
        for variant in ("ResNet, no norm", "plain, no norm"):
            frame = signal_at_init(depth, (variant,), seeds=seeds)
            checks = [growth_check(frame[frame["seed"] == s]).iloc[0] for s in range(seeds)]
            per_seed = [float(c["measured"]) for c in checks]
            rows.append({"depth": depth, "variant": variant, "per_seed": per_seed, "interval": interval(per_seed),
                         "mean_field": float(checks[0]["mean_field"]), "de_smith": float(checks[0]["de_smith"])})
    return {"command": f"python benchmarks/science.py growth --seeds {seeds}", "seeds": list(range(seeds)),
            "settings": "64 N(0,1) images 32×32, width 16, no normalisation, He init; per seed the geometric-mean "
                        "growth of E[x²] per block within a stage", "rows": rows}


def render_growth(r: dict) -> str:
    lines = [f"`{r['command']}` — {r['settings']}; 95 % t intervals over seeds {r['seeds'][0]}..{r['seeds'][-1]}. "
             f"Measured with {env_line(r)}.", "",
             "| depth | net | growth per block, mean [95 % interval] | min..max | mean-field prediction | "
             "De & Smith |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        i = row["interval"]
        lines.append(f"| {row['depth']} | {row['variant']} | {fmt_interval(i)} | {i['min']:.3f}..{i['max']:.3f} | "
                     f"{row['mean_field']:.3f} | {row['de_smith']:g} |")
    return "\n".join(lines) + "\n"


# ---- shattered gradients, Balduzzi et al.'s 1-D experiment ---------------------------------------------------
SHATTER_DEPTHS = (1, 2, 4, 8, 16, 24, 50)


def shattered(seeds: int, max_lag: int = 32) -> dict:
    """Autocorrelation curves of d out / d x (lags 0..max_lag) for plain and ResNet, BN and none, at each depth,
    BN with calibrated eval statistics; the decay fits against the paper's rates; kinks along the line."""
    from resviz.analysis.shattered import BN_CALIBRATED, fc_net, line_1d, shattering_1d_vs_depth
    from resviz.analysis.shattered_1d import acf_curves, decay_rates, kinks_table

    frame = shattering_1d_vs_depth(depths=SHATTER_DEPTHS, seeds=seeds, max_lag=max_lag, bn_modes=(BN_CALIBRATED,))
    nets = {f"{arch}-50, {norm}": fc_net(50, arch=arch, norm=norm, seed=s)
            for arch in ("plain", "resnet") for norm in ("none", "batch") for s in (0,)}
    kinks = kinks_table(nets, line_1d(256))
    return {"command": f"python benchmarks/science.py shattered --seeds {seeds}", "seeds": list(range(seeds)),
            "settings": "fully connected nets of width 200, 256 points on [−2, 2], He-normal weights, PyTorch's "
                        "default biases, float64; BN with calibrated eval statistics (the line's own batch "
                        f"statistics, held fixed); lags 0..{max_lag}; depth = ReLU layers",
            "curves": acf_curves(frame).to_dict(orient="records"),
            "decay": decay_rates(frame).to_dict(orient="records"), "kinks": kinks.to_dict(orient="records")}


def shattered_train(seeds: int, max_lag: int = 32) -> dict:
    """The panel nets (feedforward BN depth 1 and 24, BN-ResNet depth 50) with both BN modes: curves, and how
    the two per-point derivatives correlate with each other (per seed)."""
    from resviz.analysis.shattered import BN_CALIBRATED, BN_TRAIN, autocorrelation_1d, fc_net, gradients_1d, line_1d
    from resviz.analysis.shattered_1d import PANELS, acf_curves

    x, rows, agree = line_1d(256), [], []
    for title, arch, depth in PANELS:
        for s in range(seeds):
            net = fc_net(depth, arch=arch, norm="batch", seed=s)
            g = {mode: gradients_1d(net, x, mode) for mode in (BN_CALIBRATED, BN_TRAIN)}
            for mode, grad in g.items():
                rows += [dict(arch=arch, norm="batch", bn_mode=mode, depth=depth, seed=s, lag=k, autocorrelation=a)
                         for k, a in enumerate(autocorrelation_1d(grad, max_lag))]
            agree.append(dict(panel=title, seed=s, r=float(np.corrcoef(g[BN_CALIBRATED], g[BN_TRAIN])[0, 1])))
    import pandas as pd

    return {"command": f"python benchmarks/science.py shattered-train --seeds {seeds}", "seeds": list(range(seeds)),
            "settings": "Balduzzi et al.'s panels (feedforward with BN, depths 1 and 24; ResNet with BN, depth 50), "
                        "width 200, 256 points on [−2, 2]; d out_i / d x_i with BN in calibrated eval (statistics "
                        "held fixed) and in train mode (the diagonal of the batch's Jacobian)",
            "curves": acf_curves(pd.DataFrame(rows)).to_dict(orient="records"), "agreement": agree}


# ---- Fig. 7 in eval mode, plain vs ResNet, trained -----------------------------------------------------------
FIG7_RUNS = ROOT / "runs" / "science-fig7"  # git-ignored; finished runs are reused, cut ones resume


def fig7_configs(seeds: int, depth: int, steps: int, batch: int):
    """The demo's recipe (digits, width 8, batch 64, lr 0.1 with warm-up, milestones at 50/75 %) at `depth` and
    `steps`, evaluated only at the end; the Recorder takes response_std once (the end)."""
    from resviz.demo import DEMO
    from resviz.sweeps import grid

    base = dataclasses.replace(DEMO, steps=steps, batch_size=batch, warmup_steps=max(1, steps // 10),
                               log_every=steps // 10,
                               eval_every=steps, checkpoint_every=steps, record_every=steps,
                               record_metrics=("response_std",), progress=False)
    configs = grid(base, depths=(depth,), archs=("plain", "resnet"), seeds=tuple(range(seeds)))
    return base, sorted(configs, key=lambda c: (c.seed, c.arch))  # a seed's pair finishes together


def _fig7_run(folder: Path) -> dict:
    """A finished run's last eval-mode Fig. 7 (all norm layers, and the first ten) and its errors."""
    import pandas as pd

    stats = pd.read_parquet(folder / "stats.parquet")
    ev = stats[stats["metric"].astype(str) == "response_std_eval"]
    ev = ev[ev["step"] == ev["step"].max()].sort_values("layer_index")
    metrics = pd.read_parquet(folder / "metrics.parquet")
    last = metrics.dropna(subset=["test_error"]).iloc[-1]
    return {"step": int(ev["step"].iloc[0]), "eval_mean": float(ev["value"].mean()),
            "eval_first10": float(ev["value"].iloc[:10].mean()),
            "clean_train_error": float(last["clean_train_error"]), "test_error": float(last["test_error"])}


def _finished(folder: Path) -> bool:
    status = folder / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("status") == "done"


def fig7_effect(seeds: int, depth: int, steps: int, batch: int, workers: int, train: bool = True) -> dict:
    """Train the pairs (skipping finished runs; `train=False`: none), then summarise the seeds whose two runs
    both finished: per seed, and paired plain − ResNet differences with 95 % t intervals."""
    from resviz.sweeps import run_sweep

    base, configs = fig7_configs(seeds, depth, steps, batch)
    t0 = time.perf_counter()
    if train:
        run_sweep(configs, FIG7_RUNS, workers=workers, progress=True)
    wall = time.perf_counter() - t0
    pairs = [(p, r) for p, r in zip(configs[0::2], configs[1::2])  # (plain, resnet) of one seed, sorted by arch
             if _finished(FIG7_RUNS / p.run_id) and _finished(FIG7_RUNS / r.run_id)]
    per_seed = {c.run_id: {"arch": c.arch, "seed": c.seed, **_fig7_run(FIG7_RUNS / c.run_id)}
                for pair in pairs for c in pair}
    paired = {}
    for key in ("eval_mean", "eval_first10", "clean_train_error", "test_error"):
        diffs = [per_seed[p.run_id][key] - per_seed[r.run_id][key] for p, r in pairs]
        paired[key] = {"plain_minus_resnet": diffs, "interval": interval(diffs),
                       "plain": interval([per_seed[p.run_id][key] for p, _ in pairs]),
                       "resnet": interval([per_seed[r.run_id][key] for _, r in pairs])}
    return {"command": f"python benchmarks/science.py fig7-effect --seeds {seeds} --depth {depth} --steps {steps} "
                       f"--batch {batch}",
            "seeds": [p.seed for p, _ in pairs], "seeds_planned": seeds, "depth": depth, "wall_s": wall,
            "workers": workers,
            "settings": f"digits, width {base.width}, depth {depth}, {steps} steps, batch {base.batch_size}, lr "
                        f"{base.lr} (warm-up {base.warmup_steps} steps at {base.warmup_lr}, milestones "
                        f"{list(base.scaled_milestones)}), weight decay {base.weight_decay}; Fig. 7 in eval mode "
                        "(running statistics) on 256 fixed held-out test digits at the last step, the mean over "
                        "the net's norm layers (and over its first ten)",
            "runs": per_seed, "paired": paired}


def render_fig7_effect(r: dict) -> str:
    p, d = r["paired"], r["depth"]
    rows = [("eval-mode response std, mean over all norm layers", "eval_mean", 3, 1),
            ("the same, first ten norm layers", "eval_first10", 3, 1),
            ("clean training error (%)", "clean_train_error", 1, 100),
            ("test error (%)", "test_error", 1, 100)]
    lines = [f"`{r['command']}` — {r['settings']}. Seeds {r['seeds'][0]}..{r['seeds'][-1]}, one plain and one "
             f"ResNet per seed; 95 % t intervals; measured with {env_line(r)}.", "",
             f"| quantity | plain-{d} | ResNet-{d} | plain − ResNet, paired | seeds with plain > ResNet |",
             "|---|---|---|---|---|"]
    for label, key, digits, scale in rows:
        q = p[key]
        sc = {k: {m: (v * scale if isinstance(v, float) else v) for m, v in q[k].items()}
              for k in ("plain", "resnet", "interval")}
        lines.append(f"| {label} | {fmt_interval(sc['plain'], digits)} | {fmt_interval(sc['resnet'], digits)} | "
                     f"{fmt_interval(sc['interval'], digits, sign=True)} | {q['interval']['positive']}/"
                     f"{q['interval']['n']} |")
    return "\n".join(lines) + "\n"


def _percent(i: dict) -> dict:
    return {k: v * 100 if isinstance(v, float) else v for k, v in i.items()}


def _side(i: dict, above: str, below: str) -> str:
    return above if i["lo"] > 0 else below if i["hi"] < 0 else "not clearly different from"


MIN_SEEDS = 10  # an effect is claimed only from a paired interval over at least this many seeds


def render_fig7_claim(r: dict) -> str:
    """The README's sentences: what the benchmark shows, with its intervals, from the numbers (no effect is
    claimed from fewer than MIN_SEEDS seeds)."""
    p, d, n = r["paired"], r["depth"], len(r["seeds"])
    ev, first = p["eval_mean"]["interval"], p["eval_first10"]["interval"]
    clean = _percent(p["clean_train_error"]["interval"])
    env = r["environment"]
    where = f"torch {env['torch']}, {env['threads']} thread(s), {env['device']}"
    if n < MIN_SEEDS:
        return (f"The benchmark of this effect (`{r['command']}`: {r['settings'].split(';')[0]}) has {n} of its "
                f"{r['seeds_planned']} seeds finished on this machine ({where}): plain − ResNet eval-mode response "
                f"std {fmt_interval(ev, 3, True)} (95 % interval). {n} seeds are too few to claim an effect; the "
                "command resumes the rest.\n")
    return (f"In a {n}-seed benchmark (`{r['command']}`: {r['settings'].split(';')[0]}), plain-{d}'s eval-mode "
            f"responses on held-out digits are {_side(ev, 'larger than', 'smaller than')} ResNet-{d}'s: paired "
            f"difference plain − ResNet {fmt_interval(ev, 3, True)} (mean over all norm layers, 95 % interval; "
            f"{ev['positive']}/{n} seeds positive), {fmt_interval(first, 3, True)} over the first ten layers; "
            f"plain-{d}'s clean training error is {_side(clean, 'higher than', 'lower than')} ResNet-{d}'s "
            f"(difference {fmt_interval(clean, 1, True)} points). Measured with {where}.\n")


# ---- Fig. 7 on akamaster's checkpoints -----------------------------------------------------------------------
def fig7_akamaster(images: int, names=("resnet20", "resnet32", "resnet44", "resnet56")) -> dict:
    """Mean eval-mode response std and accuracy of each checkpoint on `images` fixed test images: CIFAR-10's own
    test set when data/ holds torchvision's archive, else the JPEG copy ($RESVIZ_CIFAR_JPEG), named as such."""
    from resviz.analysis.bn_check import akamaster_nets, cifar10_test_images, fig7_summary

    data, test = cifar10_test_images(ROOT / "data", jpeg_copy=os.environ.get("RESVIZ_CIFAR_JPEG") or None, n=images)
    frame = fig7_summary(akamaster_nets(list(names)), test.images, test.labels, data)
    return {"command": f"python benchmarks/science.py fig7-akamaster --images {images}", "data": data,
            "images": images, "seeds": [0], "settings": f"{images} test images (a fixed random subset, seed 0) of "
            f"{data}; eval mode (BN running statistics), one batch; mean over each net's norm layers",
            "rows": frame.to_dict(orient="records")}


def render_fig7_akamaster(r: dict) -> str:
    lines = [f"`{r['command']}` — {r['settings']}. Measured with {env_line(r)}.", "",
             f"| checkpoint | mean response std (eval mode) | accuracy on these images |", "|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['net']} | {row['mean_response_std']:.3f} | {100 * row['accuracy']:.1f} % |")
    return "\n".join(lines) + "\n"


def render_fig7_akamaster_claim(r: dict) -> str:
    values = [row["mean_response_std"] for row in r["rows"]]
    order = "falls with every step in depth" if all(a > b for a, b in zip(values, values[1:])) else \
        "does not fall monotonically with depth"
    shown = ", ".join(f"{row['net']} {row['mean_response_std']:.2f}" for row in r["rows"])
    return (f"On {r['images']:,} images of {r['data']}, the mean eval-mode response std of akamaster's released "
            f"CIFAR-10 checkpoints {order} ({shown}; one checkpoint per depth, so no interval; "
            f"`{r['command']}`).\n")


# ---- Fixup at lr 0.1 under its official recipe -------------------------------------------------------------
FIXUP_RUNS = ROOT / "runs" / "science-fixup"


def _fixup_row(folder: Path, config) -> dict:
    """A run's outcome: status (done / diverged / ...), the step it ended at, its last finite running training
    error and loss (from metrics.parquet)."""
    import pandas as pd

    status = json.loads((folder / "status.json").read_text())
    metrics = pd.read_parquet(folder / "metrics.parquet") if (folder / "metrics.parquet").is_file() else None
    finite = metrics[np.isfinite(metrics["loss"])] if metrics is not None else None
    last = finite.iloc[-1] if finite is not None and len(finite) else None
    return {"alpha": config.mixup_alpha, "seed": config.seed, "status": status["status"],
            "step": int(status.get("step") or 0),
            "train_error": float(last["train_error"]) if last is not None else float("nan"),
            "loss": float(last["loss"]) if last is not None else float("nan")}


def fixup_lr(seeds: int, lr: float, steps: int, alphas=(0.0, 1.0), workers: int = 2, train: bool = True) -> dict:
    """Notebook 08's Fixup-ResNet-20 (digits, width 8) at `lr` for the first `steps` of its 800-step schedule
    (warm-up 40 steps at 0.01, no decay yet), with the official trainer's recipe (parameter groups: biases and
    scales at lr/10; PyTorch's default stem init), without and with mixup (α = 1): per seed, diverged or not."""
    from resviz.sweeps import grid, run_sweep

    sys.path.insert(0, str(ROOT / "notebooks"))
    from sizes import DIGITS_BASE  # notebook 08's full-size recipe on the digits

    base = dataclasses.replace(DIGITS_BASE, lr=lr, steps=steps, schedule_steps=64_000 * steps // 800,
                               log_every=10, eval_every=steps, checkpoint_every=steps, record_every=steps,
                               record_metrics=("branch_scale",), progress=False, device="cpu")
    configs = [dataclasses.replace(c, mixup_alpha=a)
               for c in grid(base, depths=(20,), norms=("none",), branch_inits=("fixup",), seeds=tuple(range(seeds)))
               for a in alphas]  # seed by seed, both α: a cut benchmark still compares them
    folder = FIXUP_RUNS / f"lr{lr:g}"
    if train:
        run_sweep(configs, folder, workers=workers, progress=True)
    rows = [_fixup_row(folder / c.run_id, c) for c in configs if (folder / c.run_id / "status.json").is_file()]
    rows = [row for row in rows if row["status"] in ("done", "diverged")]
    return {"command": f"python benchmarks/science.py fixup --seeds {seeds} --lr {lr:g} --steps {steps}",
            "seeds": sorted({row["seed"] for row in rows}), "lr": lr, "steps": steps,
            "settings": f"Fixup-ResNet-20, digits, width 8, batch {base.batch_size}, lr {lr:g} after a "
                        f"{base.warmup_steps}-step warm-up at {base.warmup_lr}, the first {steps} steps of notebook "
                        "08's 800-step schedule; official recipe: biases and scales at lr/10, PyTorch's default "
                        "stem init; mixup α = 0 and α = 1", "rows": rows}


def render_fixup(r: dict) -> str:
    lines = [f"`{r['command']}` — {r['settings']}. Runs finished: seeds {r['seeds']}. Measured with {env_line(r)}.",
             "", "| mixup α | runs diverged (loss not finite) | the others at their last step: running training "
             "error, loss |", "|---|---|---|"]
    for alpha in sorted({row["alpha"] for row in r["rows"]}):
        mine = [row for row in r["rows"] if row["alpha"] == alpha]
        bad = [row for row in mine if row["status"] == "diverged"]
        ok = [row for row in mine if row["status"] == "done"]
        when = f" (at steps {', '.join(str(row['step']) for row in bad)})" if bad else ""
        shown = ", ".join(f"seed {row['seed']}: {100 * row['train_error']:.1f} %, {row['loss']:.3f}" for row in ok)
        lines.append(f"| {alpha:g} | {len(bad)}/{len(mine)}{when} | {shown or '—'} |")
    return "\n".join(lines) + "\n"


def _cell(curves: list[dict], **key) -> str:
    hit = [c for c in curves if all(c[k] == v for k, v in key.items())]
    if not hit:
        return "—"
    c = hit[0]
    return f"{c['mean']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]" if c["n"] > 1 else f"{c['mean']:.2f}"


def render_shattered(r: dict) -> str:
    depths = sorted({c["depth"] for c in r["curves"]})
    nets = sorted({(c["arch"], c["norm"], c["bn_mode"]) for c in r["curves"]})
    lines = [f"`{r['command']}` — {r['settings']}. Lag-1 autocorrelation of d out / d x, mean [95 % t interval] "
             f"over seeds {r['seeds'][0]}..{r['seeds'][-1]}; measured with {env_line(r)}.", "",
             "| net | BN mode | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|---|" + "---|" * len(depths)]
    for arch, norm, mode in nets:
        cells = [_cell(r["curves"], arch=arch, norm=norm, bn_mode=mode, depth=d, lag=1) for d in depths]
        lines.append(f"| {arch}, {'BN' if norm == 'batch' else 'no norm'} | {mode} | " + " | ".join(cells) + " |")
    lines += ["", "Decay with depth against the rates Balduzzi et al. derive (`resviz.analysis.shattered_1d."
              "decay_rates`: plain — slope of log2(lag-1) per layer over the depths with lag-1 > 0.1; ResNet — "
              "exponent k of lag-1 ∝ L^k):", "",
              "| net | BN mode | the paper's form | its rate | measured rate | depths fitted |",
              "|---|---|---|---|---|---|"]
    for d in r["decay"]:
        paper = "—" if d["paper_rate"] != d["paper_rate"] else f"{d['paper_rate']:g}"
        lines.append(f"| {d['arch']}, {'BN' if d['norm'] == 'batch' else 'no norm'} | {d['bn_mode']} | "
                     f"{d['paper_form']} | {paper} | {d['measured_rate']:.3f} | {d['fitted_depths']} |")
    lines += ["", "ReLU switches between neighbouring points along the line (seed 0, depth 50; "
              "`shattered_1d.kinks_table`): where the derivative of a piecewise-linear net can change.", "",
              "| net | first layer | all later layers | pairs of neighbouring points with a switch |",
              "|---|---|---|---|"]
    for k in r["kinks"]:
        lines.append(f"| {k['net']} | {k['first_layer']:,} | {k['later_layers']:,} | "
                     f"{k['pairs_with_a_switch']:.2f} |")
    return "\n".join(lines) + "\n"


def render_shattered_train(r: dict) -> str:
    from statistics import mean

    lines = [f"`{r['command']}` — {r['settings']}. Mean [95 % t interval] over seeds {r['seeds'][0]}.."
             f"{r['seeds'][-1]}; measured with {env_line(r)}.", "",
             "| panel | BN mode | lag 1 | lag 4 | lag 16 | r(calibrated, train) per seed |",
             "|---|---|---|---|---|---|"]
    panels = list(dict.fromkeys(a["panel"] for a in r["agreement"]))
    for panel in panels:
        arch, depth = ("plain" if panel.startswith("feedforward") else "resnet"), int(panel.rsplit(" ", 1)[1])
        rs = [a["r"] for a in r["agreement"] if a["panel"] == panel]
        for mode in sorted({c["bn_mode"] for c in r["curves"]}):
            cells = [_cell(r["curves"], arch=arch, depth=depth, bn_mode=mode, lag=k) for k in (1, 4, 16)]
            shown = ", ".join(f"{v:.2f}" for v in rs) + f" (mean {mean(rs):.2f})"
            lines.append(f"| {panel} | {mode} | " + " | ".join(cells) + f" | {shown} |")
    return "\n".join(lines) + "\n"


# ---- the documents -------------------------------------------------------------------------------------------
BLOCKS = {  # block name -> (results file, renderer)
    "growth": ("growth", render_growth),
    "fig7-effect": ("fig7_effect", render_fig7_effect),
    "fig7-claim": ("fig7_effect", render_fig7_claim),
    "fig7-akamaster": ("fig7_akamaster", render_fig7_akamaster),
    "fig7-akamaster-claim": ("fig7_akamaster", render_fig7_akamaster_claim),
    "fixup": ("fixup", render_fixup),
    "shattered": ("shattered", render_shattered),
    "shattered-train": ("shattered_train", render_shattered_train),
}


def rendered(name: str) -> str:
    """A block's text from its results file."""
    if name not in BLOCKS:
        raise ValueError(f"block {name!r} is unknown; use one of {', '.join(BLOCKS)}")
    file, render = BLOCKS[name]
    return render(load(file))


def write_documents() -> None:
    """Every marked block of README.md and BENCHMARKS.md rewritten from its results file."""
    for path in DOCUMENTS:
        text = path.read_text()
        new = BLOCK.sub(lambda m: f"<!-- results:{m['name']} -->\n{rendered(m['name'])}<!-- /results:{m['name']} -->",
                        text)
        if new != text:
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["growth", "shattered", "shattered-train", "fig7-effect", "fig7-akamaster", "fixup",
                                    "write"])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--summarise", action="store_true", help="train nothing: summarise the runs that finished")
    args = p.parse_args(argv)
    if args.what == "write":
        write_documents()
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.what == "growth":
        result = growth(args.seeds)
    elif args.what == "shattered":
        result = shattered(args.seeds)
    elif args.what == "shattered-train":
        result = shattered_train(args.seeds)
    elif args.what == "fixup":
        result = fixup_lr(args.seeds, args.lr, args.steps, workers=args.workers, train=not args.summarise)
    elif args.what == "fig7-effect":
        result = fig7_effect(args.seeds, args.depth, args.steps, args.batch, args.workers, train=not args.summarise)
    else:
        result = fig7_akamaster(args.images)
    save(args.what.replace("-", "_"), {**result, "environment": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
