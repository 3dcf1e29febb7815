"""The `resviz sweep` command's options, and the engine they choose: `--engine local` or `--engine ray`."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import pandas as pd

from resviz.errors import UserError
from resviz.sweeps.common import GRID_FIELDS
from resviz.sweeps.local import run_sweep
from resviz.sweeps.ray_engine import run_grid_on_ray
from resviz.train import TrainConfig

ENGINES = ("local", "ray")


def add_sweep_arguments(parser: argparse.ArgumentParser,
                        add_config_options: Callable[..., None] | None = None) -> None:
    """The sweep command's options: the grid (--depths, --arch, --norm, --shortcut, --seeds, --branch-init),
    --workers, --config, --out, then `add_config_options(parser, skip=GRID_FIELDS)` (the command line's flags of
    the TrainConfig fields a grid does not vary, shared with `resviz train`), then the engine: --engine,
    --address, --gpus-per-run, --cpus-per-run, --max-retries."""
    parser.add_argument("--depths", default=None, help="comma-separated depths 6n+2, e.g. 20,32,44,56")
    parser.add_argument("--arch", default=None, help="comma-separated: plain,resnet")
    parser.add_argument("--norm", default=None, help="comma-separated: batch,layer,group,none")
    parser.add_argument("--shortcut", default=None, help="comma-separated: A,B")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1")
    parser.add_argument("--branch-init", default=None, help="comma-separated: none,skipinit,rezero,fixup")
    parser.add_argument("--workers", type=int, default=None, help="runs at once, one process each (default 1)")
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig keys shared by every run")
    parser.add_argument("--out", default="runs", help="folder that holds the run folders (default: runs)")
    if add_config_options is not None:
        add_config_options(parser, skip=GRID_FIELDS)
    g = parser.add_argument_group("engine", "where the runs execute (Ray: pip install 'resviz[ray]')")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: processes on this machine (--workers); ray: one Ray task per run (default: local)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: auto (the one `ray start` runs on this machine) or HOST:PORT; "
                        "default: start a private one on 127.0.0.1 for this sweep")
    g.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs per run, fractions allowed (0.25: four runs share a GPU); default: 1 when the "
                        "cluster has GPUs, else 0")
    g.add_argument("--cpus-per-run", type=float, default=None, help="CPUs per run (default 1)")
    g.add_argument("--max-retries", type=int, default=None,
                   help="retries of a run whose worker or node died; each resumes from its checkpoint (default 3)")


def dispatch(args: argparse.Namespace, configs: list[TrainConfig], out: str | os.PathLike) -> pd.DataFrame:
    """Run the grid on the engine the sweep command's options name; the summary table, one row per run."""
    progress = configs[0].progress if configs else True
    ray_flags = {"--address": args.address, "--gpus-per-run": args.gpus_per_run,
                 "--cpus-per-run": args.cpus_per_run, "--max-retries": args.max_retries}
    if args.engine == "local":
        given = [flag for flag, value in ray_flags.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply to --engine ray; add --engine ray or drop them")
        return run_sweep(configs, out, workers=getattr(args, "workers", None) or 1, progress=progress)
    if getattr(args, "workers", None) is not None:
        raise UserError("--workers is for --engine local; with --engine ray, Ray places the runs "
                        "(use --cpus-per-run and --gpus-per-run)")
    return run_grid_on_ray(configs, out, address=args.address, gpus_per_run=args.gpus_per_run,
                           cpus_per_run=1.0 if args.cpus_per_run is None else args.cpus_per_run,
                           max_retries=3 if args.max_retries is None else args.max_retries, progress=progress)


__all__ = ["ENGINES", "add_sweep_arguments", "dispatch"]
