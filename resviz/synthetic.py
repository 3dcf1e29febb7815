"""Stand-in stats and training tables with the real shapes: for trying figures, benchmarks and tests without
training.

The layer names, indices, stages and blocks follow a resviz model of depth 6n+2 exactly (as the Recorder
writes them); the values are smooth deterministic curves plus seeded noise, shaped like the papers' trends
(ResNet responses smaller than plain and shrinking with depth; skip std growing along a ResNet). They
are stand-ins for plumbing, never results.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from resviz import schema
from resviz.models import check_depth, cifar_resnet
from resviz.probes.plan import build_plan

DEFAULT_METRICS = ("response_std", "grad_norm", *schema.metrics_at("block"))  # what these nets record
STAND_INS = ("branch_scale", "response_channel_std")  # not recorded here: one row per block at the block's name
FAMILIES = {"response": "response_std", "block": "branch_ratio", "param": "grad_norm"}  # family -> its rows


@dataclass(frozen=True)
class SyntheticRun:
    arch: str  # "resnet" | "plain"
    depth: int  # 6n+2
    norm: str = "batch"
    seed: int = 0
    run_id: str = ""  # "" -> "<arch><depth>-<norm>-s<seed>"

    @property
    def shortcut(self) -> str:
        return "none" if self.arch == "plain" else "A"

    @property
    def id(self) -> str:
        return self.run_id or f"{self.arch}{self.depth}-{self.norm}-s{self.seed}"


def _as_run(r) -> SyntheticRun:
    return r if isinstance(r, SyntheticRun) else SyntheticRun(*r)


@functools.lru_cache(maxsize=None)
def _catalog(depth: int, arch: str = "resnet") -> pd.DataFrame:
    """The (metric, layer, layer_index, stage, block) rows the Recorder writes for a resviz net of `depth`,
    from its plan (width 4: the layout does not depend on the width)."""
    check_depth(depth)
    model = cifar_resnet(depth, plain=arch == "plain", width=4)
    cat = build_plan(model, frozenset(DEFAULT_METRICS)).rows
    return pd.DataFrame({k: getattr(cat, k) for k in ("metric", "layer", "layer_index", "stage", "block")})


def layers(depth: int, family: str) -> pd.DataFrame:
    """The (layer, layer_index, stage, block) rows of one metric family: "response", "block" or "param"."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} must be 'response', 'block' or 'param'")
    cat = _catalog(depth)
    rows = cat[cat["metric"] == FAMILIES[family]]
    return rows[["layer", "layer_index", "stage", "block"]].reset_index(drop=True)


def _layout(run: SyntheticRun, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """The metric's rows for this run's net (empty where it has none: a plain net's skip) and the points per
    layer_index, in the Recorder's order ("probe_branch", "probe_out" for channel_var; one "" otherwise)."""
    if metric in STAND_INS:
        return layers(run.depth, "block"), [""]
    cat = _catalog(run.depth, run.arch)
    rows = cat[cat["metric"] == metric].reset_index(drop=True)
    first = rows[rows["layer_index"] == 0]["layer"].tolist()
    points = [name.rpartition(".")[2] if len(first) > 1 else "" for name in first]
    return rows, points


def _values(run: SyntheticRun, metric: str, n_layers: int, steps: np.ndarray, rng) -> np.ndarray:
    """(S, L) positive values for one run and metric."""
    pos = np.arange(n_layers) / max(n_layers - 1, 1)  # (L,) relative depth in [0, 1]
    t = steps / max(int(steps.max()), 1)  # (S,) relative training time
    resnet = run.arch != "plain"
    growth = 1.0 + 0.6 * t[:, None]  # responses grow as the net trains
    if metric == "response_std":
        base = (0.55 * (20 / run.depth) ** 0.35 + 0.15 * np.cos(6 * pos)) if resnet else (1.0 + 0.35 * np.sin(5 * pos))
        v = base * growth
    elif metric == "grad_norm":
        decay = 0.3 if resnet else 3.0
        v = 0.05 * np.exp(-decay * (1 - pos)) * (1.2 - 0.8 * t[:, None])
    elif metric == "act_grad_norm":
        v = 1e-3 * np.exp(-(0.2 if resnet else 4.0) * (1 - pos)) * (1.2 - 0.8 * t[:, None])
    elif metric in ("skip_std", "sum_std", "channel_var"):
        v = np.sqrt(1 + pos * n_layers) * growth if resnet else (1.0 + 0.2 * pos) * growth
        if metric == "channel_var":
            v = v ** 2
    elif metric == "branch_std":
        v = (0.8 + 0.1 * np.sin(4 * pos)) * growth
    elif metric == "branch_ratio":
        v = (0.8 + 0.1 * np.sin(4 * pos)) / np.sqrt(1 + pos * n_layers) * np.ones_like(growth)
    elif metric == "channel_sq_mean":
        v = 0.1 * (1 + pos * n_layers) ** 0.5 * growth
    else:
        v = np.ones((1, n_layers)) * growth
    v = np.broadcast_to(v, (len(steps), n_layers))
    return v * np.exp(0.05 * rng.standard_normal(v.shape))


def stats_frame(
    runs=(("resnet", 20), ("plain", 20)),
    steps=(0, 100, 200),
    metrics=DEFAULT_METRICS,
    *,
    batch_size: int = 128,
    train_size: int = 50_000,
) -> pd.DataFrame:
    """A tidy stats table (schema.STATS_COLUMNS) for `runs` (SyntheticRun or (arch, depth, ...) tuples)."""
    steps = np.asarray(steps, dtype=np.int64)
    parts = []
    for run in map(_as_run, runs):
        for metric in metrics:
            lay, points = _layout(run, metric)
            if not len(lay):
                continue  # plain nets have no skip path
            n_layers = len(lay) // len(points)
            rng = np.random.default_rng([run.depth, run.seed, len(metric), sum(map(ord, metric + run.arch))])
            chunks = []
            for point in points:  # the branch variance follows branch_std, the output variance skip/sum
                like = "branch_std" if (metric, point) == ("channel_var", "probe_branch") else metric
                v = _values(run, like, n_layers, steps, rng)
                chunks.append(v ** 2 if like != metric else v)
            vals = np.stack(chunks, axis=2).reshape(len(steps), -1)  # (S, L * parts), points adjacent
            S, L = vals.shape
            parts.append(pd.DataFrame({
                "run_id": run.id, "arch": run.arch, "depth": run.depth, "norm": run.norm,
                "shortcut": run.shortcut, "seed": run.seed,
                "step": np.repeat(steps, L), "epoch": np.repeat(steps * batch_size / train_size, L),
                "layer": np.tile(lay["layer"].to_numpy(), S),
                "layer_index": np.tile(lay["layer_index"].to_numpy(), S),
                "stage": np.tile(lay["stage"].to_numpy(), S), "block": np.tile(lay["block"].to_numpy(), S),
                "metric": metric, "value": vals.reshape(-1).astype(np.float64),
            }))
    if not parts:
        return schema.empty()
    return schema.concat(parts)


def train_frame(
    runs=(("resnet", 20), ("plain", 20)),
    steps=tuple(range(0, 2001, 100)),
    *,
    eval_every: int = 500,
    batch_size: int = 128,
    train_size: int = 50_000,
) -> pd.DataFrame:
    """A per-step training log (schema.TRAIN_COLUMNS) plus the run metadata columns runs.load adds."""
    steps = np.asarray(steps, dtype=np.int64)
    t = steps / max(int(steps.max()), 1)
    parts = []
    for run in map(_as_run, runs):
        rng = np.random.default_rng([run.depth, run.seed, 7])
        floor = 0.02 + (0.004 * run.depth ** 0.5 if run.arch == "plain" else 0.1 / run.depth ** 0.5)
        train = floor + (0.9 - floor) * np.exp(-5 * t) + 0.005 * rng.random(len(t))
        test = np.where(steps % eval_every == 0, train + 0.05, np.nan)
        parts.append(pd.DataFrame({
            "run_id": run.id, "step": steps, "epoch": steps * batch_size / train_size,
            "loss": 2.3 * train, "train_error": train, "test_error": test, "test_loss": 2.3 * test,
            "lr": np.where(steps < 0.5 * steps.max(), 0.1, 0.01), "seconds": 0.05 * steps,
            "images_per_s": np.full(len(steps), 2500.0),
            "arch": run.arch, "depth": run.depth, "norm": run.norm, "shortcut": run.shortcut, "seed": run.seed,
        }))
    return pd.concat(parts, ignore_index=True)
