"""`resviz export-tb RUN --logdir DIR` and `resviz export-wandb RUN`: the adders cli.py registers.

Each adder builds its sub-parser and sets `func`; the libraries are imported only when the command runs.
"""
from __future__ import annotations

import argparse
import warnings

from resviz import runs
from resviz.errors import first_line


def _run_folders(args: argparse.Namespace) -> list:
    """The run folders named by RUN_DIR_OR_GLOB, once --depth-steps is checked."""
    if args.depth_steps < 1:
        raise ValueError(f"--depth-steps {args.depth_steps} must be a positive number of recorded steps, e.g. 8")
    folders = runs.find_runs(args.runs)
    if not folders:
        raise FileNotFoundError(f"no run folders in {args.runs}: a run folder holds config.json")
    return folders


def _export_each(folders: list, export) -> int:
    """export(folder) for each run; a damaged run is named in one warning line and skipped, as `report` does.
    The number exported; none: a ValueError."""
    done = 0
    for folder in folders:
        try:
            print(export(folder))
            done += 1
        except ValueError as err:
            warnings.warn(f"skipping run {folder}: {first_line(err)}", stacklevel=2)
    if not done:
        raise ValueError(f"none of the {len(folders)} run(s) could be exported (see the warnings above)")
    return done


def _cmd_export_tb(args: argparse.Namespace) -> int:
    from resviz.integrations.tensorboard import export_run

    _export_each(_run_folders(args), lambda f: export_run(f, args.logdir, depth_steps=args.depth_steps))
    print(f"view with: tensorboard --logdir {args.logdir}")
    return 0


def add_export_tb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-tb",
        help="write runs' statistics to a TensorBoard log dir (scalars per metric and layer, depth profiles)",
        description="Write each run's table to LOGDIR/<run_id>/: scalars <metric>/<layer> against step, the "
        "training log as train/*, depth profiles depth/<metric>/step<k> (x = layer index) and a CUSTOM SCALARS "
        "layout with one chart per metric against step and one against depth.",
    )
    p.add_argument("runs", metavar="RUN_DIR_OR_GLOB", help="a run folder, a folder of runs, or a quoted glob")
    p.add_argument("--logdir", default="tb", help="TensorBoard log dir (default: tb)")
    p.add_argument("--depth-steps", type=int, default=8, help="recorded steps drawn as depth profiles (default 8)")
    p.set_defaults(func=_cmd_export_tb)


def _cmd_export_wandb(args: argparse.Namespace) -> int:
    from resviz.integrations.wandb import export_run

    _export_each(_run_folders(args), lambda f: export_run(f, project=args.project, entity=args.entity,
                                                          mode=args.mode, dir=args.dir, depth_steps=args.depth_steps))
    return 0


def add_export_wandb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-wandb",
        help="log runs' statistics to Weights & Biases (per-layer scalars, depth-profile line plots and tables)",
        description="Log each run as a W&B run named after it: <metric>/<layer> against resviz/step, the "
        "training log as train/*, depth profiles as line plots depth/<metric> and tables depth_table/<metric>.",
    )
    p.add_argument("runs", metavar="RUN_DIR_OR_GLOB", help="a run folder, a folder of runs, or a quoted glob")
    p.add_argument("--project", default="resviz", help="W&B project (default: resviz)")
    p.add_argument("--entity", default=None, help="W&B entity (default: yours)")
    p.add_argument("--mode", default=None, choices=("online", "offline", "disabled"),
                   help="W&B mode (default: $WANDB_MODE, else online); offline runs upload with `wandb sync`")
    p.add_argument("--dir", default=None, help="folder for W&B's local files (default: ./wandb)")
    p.add_argument("--depth-steps", type=int, default=8, help="recorded steps drawn as depth profiles (default 8)")
    p.set_defaults(func=_cmd_export_wandb)


__all__ = ["add_export_tb", "add_export_wandb"]
