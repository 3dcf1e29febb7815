"""Grids of training runs: depth x arch x norm x shortcut x seed, skipping what is finished.

`grid` expands a base config; `run_sweep` trains the grid here (`--engine local`: one process, or `workers`
side by side), `run_grid_on_ray` as one Ray task per run (`--engine ray`; `pip install 'resviz[ray]'`); both
return the summary table that `format_summary` prints.

    common.py           the grid, one run into its folder, the summary table: what both engines share
    local.py            --engine local: this process, or worker processes that die with it
    ray_engine.py       --engine ray: one Ray task per run, on a cluster joined or started privately
    private_cluster.py  the private cluster: runs the Ray engine in the confined child, forwards Ctrl-C
    confined.py         that child, run as a file: a loopback-only network namespace, then the Ray engine
    command.py          the `resviz sweep` command's options and the engine they choose
"""
from resviz.sweeps.common import format_summary, grid
from resviz.sweeps.local import run_sweep, side_by_side_workers
from resviz.sweeps.ray_engine import run_grid_on_ray

__all__ = ["format_summary", "grid", "run_grid_on_ray", "run_sweep", "side_by_side_workers"]
