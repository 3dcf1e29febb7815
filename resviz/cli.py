"""`resviz` command line: one sub-command per job; each is a thin call into the package.

Each command is a pair: `add_<name>(subparsers)` builds its parser and sets `func` to the `_cmd_<name>` that runs
it; `build_parser` adds them in the order of `COMMANDS`. A user's mistake (`UserError`, or a `ValueError`,
`FileNotFoundError`, `NotADirectoryError` or `PermissionError` naming the bad value) ends in one line
`resviz: error: ...` and exit status 2, without a traceback (set RESVIZ_DEBUG=1 to see one). Anything else is a
bug and keeps its traceback. Ctrl-C exits with status 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

import pandas as pd
import torch
import yaml

from resviz import datasets, export, runs
from resviz.analysis.invariance import NORMS, TRANSFORMATIONS, invariance_flags, invariance_grid, measure_invariance
from resviz.analysis.lesion import check_ks, lesion_random, lesion_single, resolve_blocks, summarise_random
from resviz.demo import run_demo
from resviz.errors import UserError, first_line, os_error_line
from resviz.evaluate import check_classes, evaluate, load_model_for_eval
from resviz.integrations import tensorboard, wandb
from resviz.io import make_folder
from resviz.report import write_report
from resviz.runfolder import check_run_id
from resviz.sweeps import format_summary, grid
from resviz.sweeps.command import add_sweep_arguments, dispatch
from resviz.sweeps.common import GRID_FIELDS
from resviz.train import TrainConfig, train
from resviz.train.config import absolute_dataset, parse_number
from resviz.train.folder import finished_result
from resviz.train.launch import launch
from resviz.train.ranks import Elsewhere, Ranks, check_nproc

USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)  # one line, exit 2


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")


def _runs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", metavar="RUN_DIR_OR_GLOB", help="a run folder, a folder of runs, or a quoted glob")


# ---------------------------------------------------------------------------------------------
# train / sweep / demo (resviz.train, resviz.sweeps, resviz.demo)
# ---------------------------------------------------------------------------------------------
def _config_help() -> dict[str, str]:
    """Help text of every TrainConfig field, read from the field comments (one source of truth)."""
    helps = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        m = re.match(r"\s+(\w+): [^=]+= (.+?)\s+# (.+)$", line)
        if m:
            helps[m.group(1)] = f"{m.group(3)} (default: {m.group(2)})"
    return helps


def _add_config_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    helps = _config_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(TrainConfig, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                           help=helps.get(f.name))
        elif f.name in ("milestones", "record_metrics"):
            p.add_argument(flag, dest=f.name, default=None, help=(helps.get(f.name) or "") + "; comma-separated")
        else:
            p.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=helps.get(f.name))


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: "
                         f"{first_line(err)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of TrainConfig keys to values")
    return data


def _config_from_args(args: argparse.Namespace, skip: tuple[str, ...] = ()):
    """TrainConfig from --config (if any) overlaid with the flags given on the command line."""
    values = _read_config_file(args.config) if getattr(args, "config", None) else {}
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig) if f.name not in skip}
    config = TrainConfig.from_text({k: v for k, v in given.items() if v is not None}, base=values).validate()
    return dataclasses.replace(config, dataset=absolute_dataset(config.dataset))  # as here, wherever it trains


def _cmd_train(args: argparse.Namespace) -> int:
    args.ranks = Ranks.from_environment()  # one of N processes under torchrun (`--nproc N` started them)
    config = _config_from_args(args)
    nproc = check_nproc(None if args.nproc is None else parse_number(args.nproc, int, "nproc"), config.batch_size)
    if args.ranks is not None and args.nproc is not None:
        raise ValueError("--nproc starts torchrun itself: drop it from a command that torchrun runs")
    if nproc > 1:  # checked here, before any process starts: the folder's config, a finished run
        folder = Path(args.out) / check_run_id(config.run_id if args.run_id is None else args.run_id, args.out)
        result = finished_result(config, folder)
        if result is None:
            return launch(nproc, args.argv, folder)
    else:
        result = train(config, args.out, run_id=args.run_id, ranks=args.ranks)
    if args.ranks is None or args.ranks.writes:
        print(f"{result.run_id}: {result.status} at step {result.step}, train error {100 * result.train_error:.2f} %, "
              f"test error {100 * result.test_error:.2f} % -> {result.folder}")
    if args.ranks is not None:
        return 0  # the launching process reads done or diverged from the run's status.json
    return 0 if result.status == "done" else 3


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one plain or residual net while recording per-layer statistics",
                       description="Train one run into OUT/<run id>/ (He et al.'s CIFAR recipe by default). "
                       "Running the same command again resumes a cut run; a finished run is not trained again.")
    p.add_argument("--config", help="YAML or JSON file of TrainConfig keys; command-line flags override it")
    p.add_argument("--out", default="runs", help="folder that holds run folders (default: runs)")
    p.add_argument("--run-id", default=None, help="name of the run folder (default: derived from the config)")
    p.add_argument("--nproc", default=None, metavar="N",
                   help="train the run in N processes (DDP under torchrun: gloo on the CPU, NCCL on GPUs), each on "
                   "1/N of every batch; the batch size must be divisible by N (default: 1, this process)")
    _add_config_options(p)
    p.set_defaults(func=_cmd_train)


def _csv(text: str | None, kind: type, flag: str) -> tuple:
    """The values of a comma-separated option; a bad one is named with the option the user typed."""
    if text is None:
        return (None,)
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{flag} {text!r} is an empty list: give comma-separated values")
    return tuple(parse_number(t, kind, flag) if kind is not str else t for t in items)


def _cmd_sweep(args: argparse.Namespace) -> int:
    base = _config_from_args(args, skip=GRID_FIELDS)
    configs = grid(base, depths=_csv(args.depths, int, "depths"), archs=_csv(args.arch, str, "arch"),
                   norms=_csv(args.norm, str, "norm"), shortcuts=_csv(args.shortcut, str, "shortcut"),
                   seeds=_csv(args.seeds, int, "seeds"), branch_inits=_csv(args.branch_init, str, "branch-init"))
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers={args.workers} must be at least 1")
    make_folder(args.out)
    print(f"sweep: {len(configs)} runs into {args.out}")
    table = dispatch(args, configs, args.out)  # --engine local (processes here) or ray (tasks on a cluster)
    print(format_summary(table))
    if table["status"].isin(["done", "diverged"]).all():
        return 0
    print(f"resviz: {(~table['status'].isin(['done', 'diverged'])).sum()} of {len(table)} runs did not finish; "
          "fix the reasons above and run the same command again: finished runs are skipped, cut ones resumed",
          file=sys.stderr)
    return 3


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train a grid of runs (depth x arch x norm x shortcut x seed)",
                       description="Train every combination into OUT/<run id>/. Finished runs are skipped, cut "
                       "ones resumed, failed ones retried; a summary table prints at the end.")
    add_sweep_arguments(p, _add_config_options)  # the grid, TrainConfig's flags, the engine (--engine local|ray)
    p.set_defaults(func=_cmd_sweep)


def _cmd_demo(args: argparse.Namespace) -> int:
    formats = export.parse_formats(args.formats) if args.formats is not None else None  # before any training
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file, not a folder; choose a folder for the demo's runs")
    try:
        done = run_demo(args.out, smoke=args.smoke, root=args.root, progress=not args.no_progress, formats=formats)
    except export.BrowserNotFoundError as err:  # formats asked for by name: the user can install a browser
        raise UserError(str(err)) from err
    print(done["text"])
    for path in done["figures"]:
        print(f"wrote {path}")
    if done["note"]:
        print(done["note"])
    print(done["next"])
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="plain vs residual, shallow vs deep, on the built-in digits (CPU, minutes)",
                       description="Train plain and residual nets at a shallow and a deep depth on the built-in "
                       "digits, record them, and write their report page OUT/report/index.html.")
    p.add_argument("--out", default=None,
                   help="folder for the demo's runs and report (default: runs/demo; runs/demo-smoke with --smoke)")
    p.add_argument("--root", default="data", help="folder for datasets and their caches (default: data)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long version (tiny depths, 20 steps) for tests")
    p.add_argument("--formats", default=None,
                   help="figure files beside the report, from html,png,svg,pdf; formats named here must be made "
                   "(default: png when a browser is found, else the page alone)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


# ---------------------------------------------------------------------------------------------
# evaluate (resviz.evaluate, resviz.pretrained, resviz.datasets)
# ---------------------------------------------------------------------------------------------
def _checked_device(args: argparse.Namespace):
    """The --device of `evaluate` and `lesion`, once --batch-size is checked; refuses --device cuda without CUDA
    before any loading."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be a positive integer")
    return datasets.resolve_device(args.device)


def _load_split(args: argparse.Namespace):
    """(dataset, images, labels) of --dataset's --split."""
    data = datasets.load(args.dataset, root=args.root, progress=not args.json)
    return (data, *data.split(args.split))


def _add_checkpoint_and_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="resnet20 .. resnet1202 (akamaster), or a .th file")
    p.add_argument("--dataset", required=True, help="digits, cifar10, or imagefolder:PATH")
    p.add_argument("--split", default="test", choices=("train", "test"), help="which split (default: test)")
    _device_arg(p)
    p.add_argument("--batch-size", type=int, default=500, help="images per forward pass (default 500)")
    p.add_argument("--root", default="data", help="folder for datasets and their caches (default: data)")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    device = _checked_device(args)
    model, mean, std = load_model_for_eval(args.checkpoint)
    data, images, labels = _load_split(args)
    check_classes(model, data.classes, f"--checkpoint {args.checkpoint}")
    result = evaluate(
        model, images, labels, mean=mean, std=std, batch_size=args.batch_size, device=device, progress=not args.json
    )
    if args.json:
        print(json.dumps({"accuracy": round(result["accuracy"], 6), "loss": round(result["loss"], 6), "n": result["n"]}))
    else:
        print(
            f"{args.checkpoint} on {data.name} {args.split} ({result['n']:,} images, {device}): "
            f"top-1 accuracy {100 * result['accuracy']:.2f} %, loss {result['loss']:.4f}"
        )
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1 accuracy and loss of a checkpoint on a dataset split",
        description="Top-1 accuracy and mean cross-entropy of a checkpoint on a dataset split.",
    )
    _add_checkpoint_and_data_args(p)
    p.add_argument("--json", action="store_true", help='print one line {"accuracy": ..., "loss": ..., "n": ...}')
    p.set_defaults(func=_cmd_evaluate)


# ---------------------------------------------------------------------------------------------
# report (resviz.plots, resviz.export)
# ---------------------------------------------------------------------------------------------
def _cmd_report(args: argparse.Namespace) -> int:
    formats = export.parse_formats(args.formats) if args.formats is not None else None  # before any loading
    try:
        rep = write_report(args.runs, args.out, static=formats, step=args.step)
    except export.BrowserNotFoundError as err:  # formats asked for by name: the user can install a browser
        raise UserError(str(err)) from err
    for name, why in rep.skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    if rep.static_note:
        print(rep.static_note, file=sys.stderr)
    for path in rep.files:
        print(path)
    print(f"open {rep.index} in a browser (offline: plotly.min.js sits beside it)")
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one offline page (index.html) of every standard figure of some runs, with depth and step sliders",
        description="Write OUT/index.html (and OUT/plotly.min.js beside it): what was run, an explorer of every "
        "recorded metric against depth with depth and step sliders, and the standard figures (Fig. 6 training "
        "curves, Fig. 7 response std, gradient flow, branch vs skip, signal propagation, layer x step heatmaps). "
        "PNG, SVG and PDF of each figure go to OUT/figures when Chrome/Chromium is found.",
    )
    _runs_arg(p)
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--formats", default=None,
                   help="figure files beside the page, comma-separated from html,png,svg,pdf; formats named here "
                   "must be made (default: png,svg,pdf when a browser is found, else the page alone)")
    p.add_argument("--step", type=int, default=None, help="training step of the static figures (default: each "
                   "run's last)")
    p.set_defaults(func=_cmd_report)


# ---------------------------------------------------------------------------------------------
# invariance (resviz.analysis.invariance)
# ---------------------------------------------------------------------------------------------
def _cmd_invariance(args: argparse.Namespace) -> int:
    if not 0 <= args.seed <= 2**32 - 1:
        raise ValueError(f"--seed {args.seed} must be an integer from 0 to {2**32 - 1:,}")
    norms = _names(args.norms) if args.norms else NORMS
    transformations = _names(args.transformations) if args.transformations else TRANSFORMATIONS
    frame = measure_invariance(norms=norms, transformations=transformations, seed=args.seed)
    if args.json:
        print(json.dumps(invariance_flags(frame)))
        return 0
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(invariance_grid(frame).to_string())
    print("yes = invariant (change at float64 round-off); in brackets the largest change of the normalised "
          "outputs; 128 digits cases, 32 units")
    return 0


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_invariance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "invariance",
        help="measure Ba et al.'s Table 1: what batch/weight/layer/RMS norm are invariant to",
        description="Apply six weight and data transformations to one layer on the digits set and report, per "
        "normalisation, whether its outputs change (Ba et al. 2016, Table 1), with the largest change.",
    )
    p.add_argument("--norms", default=None, help="comma-separated: batch,weight,layer,rms (default: all)")
    p.add_argument("--transformations", default=None, help="comma-separated transformation names (default: all six)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, cases and transformations (default 0)")
    p.add_argument("--json", action="store_true", help="print one line {norm: {transformation: true|false}}")
    p.set_defaults(func=_cmd_invariance)


# ---------------------------------------------------------------------------------------------
# lesion (resviz.analysis.lesion)
# ---------------------------------------------------------------------------------------------
def _cmd_lesion(args: argparse.Namespace) -> int:
    device = _checked_device(args)
    if args.draws < 1:
        raise ValueError(f"--draws {args.draws} must be at least 1")
    model, mean, std = load_model_for_eval(args.checkpoint)
    blocks = resolve_blocks(model, _names(args.blocks)) if args.blocks else None  # bad index fails here
    ks = [parse_number(k, int, "random-k") for k in _names(args.random_k)] if args.random_k else []
    check_ks(model, ks)  # before the per-block lesion, which takes a while
    data, images, labels = _load_split(args)
    check_classes(model, data.classes, f"--checkpoint {args.checkpoint}")
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit {args.limit} must be a positive number of images")
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))[: args.limit]
        images, labels = images[pick], labels[pick]
    kw = dict(mean=mean, std=std, device=device, batch_size=args.batch_size)
    single = lesion_single(model, images, labels, blocks=blocks, progress=not args.json, **kw)
    random = (
        lesion_random(model, images, labels, ks=ks, draws=args.draws, seed=args.seed, progress=not args.json, **kw)
        if ks
        else None
    )
    if args.json:
        print(_lesion_json(args, labels, single, random))
    else:
        _print_lesion(args, data.name, labels, single, random)
    return 0


def _lesion_json(args: argparse.Namespace, labels, single, random) -> str:
    """`resviz lesion --json`: one line with the baseline, the per-block and the random results."""
    out = {
        "checkpoint": str(args.checkpoint),
        "n": int(len(labels)),
        "baseline_error": single.attrs["baseline_error"],
        "single": single[["block", "position", "stage", "index", "downsample", "error", "delta"]].to_dict("records"),
    }
    if random is not None:
        out["random"] = summarise_random(random).to_dict("records")
    return json.dumps(out, default=lambda v: v.item() if hasattr(v, "item") else str(v))


def _print_lesion(args: argparse.Namespace, data_name: str, labels, single, random) -> None:
    print(f"{args.checkpoint} on {data_name} {args.split} ({len(labels):,} images): intact error "
          f"{100 * single.attrs['baseline_error']:.2f} %")
    table = single.assign(error=100 * single["error"], delta=100 * single["delta"])
    print(table[["position", "block", "downsample", "error", "delta"]].to_string(
        index=False, float_format=lambda v: f"{v:.2f}", header=["#", "removed block", "downsampling", "error %",
                                                                 "change (pp)"]))
    if random is not None:
        summary = summarise_random(random)
        print("\nrandom removals (error %, mean +- std over draws):")
        for row in summary.itertuples():
            print(f"  k={row.k:3d}: {100 * row.mean_error:6.2f} +- {100 * row.std_error:.2f}  ({row.draws} draws)")


def add_lesion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lesion",
        help="remove blocks at test time and measure the error (Veit et al. 2016)",
        description="Remove each residual block in turn (its output becomes its skip path) and measure the test "
        "error; optionally remove k random blocks several times. Plain nets get the identity (option A at a "
        "downsampling block) in place of the block.",
    )
    _add_checkpoint_and_data_args(p)
    p.add_argument("--blocks", default=None, help="comma-separated block indices (0-based, depth order) or names "
                   "like layer2.0 (default: every block)")
    p.add_argument("--random-k", default=None, help="comma-separated numbers of blocks to remove at random, e.g. 1,2,4")
    p.add_argument("--draws", type=int, default=5, help="random draws per k (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws and of --limit (default 0)")
    p.add_argument("--limit", type=int, default=None, help="evaluate on this many random images of the split")
    p.add_argument("--json", action="store_true", help="print one JSON line: baseline, per-block and random results")
    p.set_defaults(func=_cmd_lesion)




# ---------------------------------------------------------------------------------------------
# export-tb / export-wandb (resviz.integrations.tensorboard, resviz.integrations.wandb)
# ---------------------------------------------------------------------------------------------
def _run_folders(args: argparse.Namespace) -> list[Path]:
    """The run folders named by RUN_DIR_OR_GLOB, once --depth-steps is checked."""
    if args.depth_steps < 1:
        raise ValueError(f"--depth-steps {args.depth_steps} must be a positive number of recorded steps, e.g. 8")
    folders = runs.find_runs(args.runs)
    if not folders:
        raise FileNotFoundError(f"no run folders in {args.runs}: a run folder holds config.json")
    return folders


def _export_each(folders: list[Path], export_run) -> int:
    """export_run(folder) for each run; a damaged run is named in one warning line and skipped, as `report` does.
    The number exported; none: a ValueError."""
    done = 0
    for folder in folders:
        try:
            print(export_run(folder))
            done += 1
        except ValueError as err:
            warnings.warn(f"skipping run {folder}: {first_line(err)}", stacklevel=2)
    if not done:
        raise ValueError(f"none of the {len(folders)} run(s) could be exported (see the warnings above)")
    return done


def _depth_steps_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depth-steps", type=int, default=tensorboard.DEPTH_STEPS,
                   help=f"recorded steps drawn as depth profiles (default {tensorboard.DEPTH_STEPS})")


def _cmd_export_tb(args: argparse.Namespace) -> int:
    _export_each(_run_folders(args), lambda f: tensorboard.export_run(f, args.logdir, depth_steps=args.depth_steps))
    print(f"view with: tensorboard --logdir {args.logdir}")
    return 0


def add_export_tb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-tb",
        help="write runs' statistics to a TensorBoard log dir (scalars per metric and layer, depth profiles)",
        description="Write each run's table to LOGDIR/<run_id>/: scalars <metric>/<layer> against step, the "
        "training log as train/*, depth profiles depth/<metric>/step<k> (x = layer index) and a CUSTOM SCALARS "
        "layout with one chart per metric against step and one against depth. Needs resviz[tensorboard].",
    )
    _runs_arg(p)
    p.add_argument("--logdir", default="tb", help="TensorBoard log dir (default: tb)")
    _depth_steps_arg(p)
    p.set_defaults(func=_cmd_export_tb)


def _cmd_export_wandb(args: argparse.Namespace) -> int:
    _export_each(_run_folders(args), lambda f: wandb.export_run(f, project=args.project, entity=args.entity,
                                                                mode=args.mode, dir=args.dir,
                                                                depth_steps=args.depth_steps))
    return 0


def add_export_wandb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-wandb",
        help="log runs' statistics to Weights & Biases (per-layer scalars, depth-profile line plots and tables)",
        description="Log each run as a W&B run named after it: <metric>/<layer> against resviz/step, the "
        "training log as train/*, depth profiles as line plots depth/<metric> and tables depth_table/<metric>. "
        "Needs resviz[wandb].",
    )
    _runs_arg(p)
    p.add_argument("--project", default="resviz", help="W&B project (default: resviz)")
    p.add_argument("--entity", default=None, help="W&B entity (default: yours)")
    p.add_argument("--mode", default=None, choices=("online", "offline", "disabled"),
                   help="W&B mode (default: $WANDB_MODE, else online); offline runs upload with `wandb sync`")
    p.add_argument("--dir", default=None, help="folder for W&B's local files (default: ./wandb)")
    _depth_steps_arg(p)
    p.set_defaults(func=_cmd_export_wandb)


COMMANDS = (add_train, add_sweep, add_demo, add_evaluate, add_report, add_invariance, add_lesion, add_export_tb,
            add_export_wandb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resviz",
        description="See residual learning: record and plot per-layer statistics of ResNets and plain nets.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the package (a skipped damaged run) as one line, like the errors."""
    print(f"resviz: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` runs it again under torchrun
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        code = _run(args)
    except BaseException:
        if getattr(args, "ranks", None) is not None:  # a bug in one of `train --nproc`'s processes
            traceback.print_exc()
            args.ranks.exit(1)
        raise
    finally:
        warnings.showwarning = shown
    if getattr(args, "ranks", None) is not None:
        args.ranks.exit(code)  # one of `train --nproc`'s processes ends here (resviz.train.ranks: why os._exit)
    return code


def _run(args: argparse.Namespace) -> int:
    """The command's exit status; a user's mistake as one line (2), an interrupt as its line (128 + signal)."""
    try:
        result = args.func(args)
    except KeyboardInterrupt as err:  # resviz.errors.Interrupted: the run saved itself at a step boundary
        signum = getattr(err, "signum", 2)
        _say(args, f"resviz: {err}; run the same command again to resume" if str(err) else "resviz: interrupted", err)
        return 128 + signum
    except USER_ERRORS as err:
        if os.environ.get("RESVIZ_DEBUG"):
            raise
        _say(args, f"resviz: error: {first_line(err)}", err)
        return 2
    except OSError as err:  # a full disk, a long name, a read-only place: the path and the fix; others are bugs
        if os_error_line(err) is None or os.environ.get("RESVIZ_DEBUG"):
            raise
        _say(args, f"resviz: error: {os_error_line(err)}", err)
        return 2
    return int(result or 0)


def _say(args: argparse.Namespace, line: str, err: BaseException) -> None:
    """`line` on stderr. A rank other than 0 of `train --nproc` names itself, and leaves an interrupt, or what
    another rank reports (`Elsewhere`), to rank 0's line."""
    ranks = getattr(args, "ranks", None)
    if ranks is not None and not ranks.writes:
        if isinstance(err, (KeyboardInterrupt, Elsewhere)):
            return
        line = line.replace("resviz: ", f"resviz: rank {ranks.rank}: ", 1)
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
