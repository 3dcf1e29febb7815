"""Sweeps on Ray (`resviz sweep --engine ray`): one Ray task per run, placed by Ray's resources.

The run folders under `--out` stay the one source of truth: a task trains one config into `out/<run_id>/`
exactly as the local engine does (`resviz.sweeps.local`), so finished runs are skipped, cut ones resume from their
checkpoint, and `explore` / `report` read the folders while the grid runs. Ray is imported only here, and only
when `--engine ray` is chosen.

Faults: a worker or node that dies mid-run makes Ray retry the task (`max_retries`; node and worker deaths
only, `retry_exceptions=False`), and the retry resumes from the run's last checkpoint. A run that fails for its
own reasons (divergence, a bad config, out of memory) returns its outcome instead of raising: it is recorded and
never retried. Ctrl-C on the driver cancels the tasks (`ray.cancel`: the run checkpoints and marks itself
interrupted), so the same command resumes the grid.

Clusters: without `--address` resviz starts a private Ray instance (no dashboard, Ray's token authentication
left on) inside a network namespace that holds only the loopback interface (`resviz.sweeps.private_cluster`),
so nothing of it is reachable from another machine, and stops it at the end; `--address auto|HOST:PORT` joins a
running cluster, whose nodes must all see `--out` (checked by a write probe from every node before any run
starts).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from resviz import runfolder
from resviz.errors import Interrupted, RunBusy, UserError, first_line
from resviz.io import make_folder
from resviz.sweeps.common import run_one, steps_done, summary_row, summary_table
from resviz.sweeps.private_cluster import confined, run_confined
from resviz.train import TrainConfig
from resviz.train.config import absolute_dataset
from resviz.train.folder import finished_result
from resviz.train.interrupts import describe

HEAD_COMMAND = "ray start --head --port 6379 --node-ip-address 127.0.0.1"
SHARED_CHECK = ("check it from a worker node with `touch OUT/x` and `ls OUT` on the head, or use a shared "
                "filesystem (NFS, Lustre, a mounted bucket) mounted at the same path on every node")
AUTH_MODE = "RAY_AUTH_MODE"  # Ray's switch for token authentication (`ray start --head` turns it on by default)
CANCEL_WAIT_S = 60.0  # how long Ctrl-C waits for cancelled runs to checkpoint and mark themselves interrupted


# ------------------------------------------------------------------------------ the grid
def run_grid_on_ray(configs: list[TrainConfig], out: str | os.PathLike = "runs", *, address: str | None = None,
                    gpus_per_run: float | None = None, cpus_per_run: float = 1.0, max_retries: int = 3,
                    progress: bool = True) -> pd.DataFrame:
    """Run every config as a Ray task (finished runs are skipped) and return the summary table in the grid's
    order, with the columns of `resviz.sweeps.run_sweep`'s; `table.attrs["placement"]` maps each run that ran
    to what Ray gave it (node, GPU ids, CUDA_VISIBLE_DEVICES, worker pid)."""
    _check_options(cpus_per_run, gpus_per_run, max_retries)
    ray = _import_ray()
    out = make_folder(Path(out).resolve())  # absolute: workers do not share the driver's working directory
    configs = [dataclasses.replace(c, dataset=absolute_dataset(c.dataset)) for c in configs]  # an image folder too
    rows, todo = _finished_rows(configs, out)  # (a run that spelled it relative takes the absolute spelling here)
    if not todo:
        return _table(rows, configs)  # all finished: no cluster needed
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None and not ray.is_initialized() and not confined():
        return run_confined(configs, out, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run,
                            max_retries=max_retries, progress=progress)
    todo = [dataclasses.replace(c, root=str(Path(c.root).resolve())) for c in todo]  # absolute on the driver:
    # a worker resolves a relative path where `ray start` ran. A private cluster gets a temp dir of its own
    # (mode 0700, short enough for Ray's socket paths), removed when it stops
    temp = tempfile.mkdtemp(prefix="resviz-ray-") if address is None and not ray.is_initialized() else None
    started = _connect(ray, address, temp)
    try:
        with signals_as_interrupt():  # after ray.init, which replaces the SIGTERM handler
            gpus = gpus_for_each_run(ray, gpus_per_run, todo)
            nodes = nodes_that_fit(ray, cpus_per_run, gpus)
            check_storage(ray, out, nodes)
            rows += _run_tasks(ray, todo, out, cpus_per_run=cpus_per_run, gpus_per_run=gpus,
                               max_retries=max_retries, progress=progress)
    finally:
        if started:
            ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return _table(rows, configs)


@contextlib.contextmanager
def signals_as_interrupt():
    """SIGINT and SIGTERM (scancel, a SLURM time limit, a pod's deletion) raise `Interrupted` in the driver, so
    both cancel the tasks as Ctrl-C does: the runs checkpoint and read `interrupted`, the command exits 130 or
    143. Installed after ray.init, which replaces the SIGTERM handler (the confined child's too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum, f"sweep interrupted by {describe(signum)}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_options(cpus_per_run: float, gpus_per_run: float | None, max_retries: int) -> None:
    if not cpus_per_run > 0:
        raise UserError(f"--cpus-per-run {cpus_per_run:g} must be positive, e.g. 1")
    if gpus_per_run is not None and (gpus_per_run < 0 or (gpus_per_run > 1 and gpus_per_run != int(gpus_per_run))):
        raise UserError(f"--gpus-per-run {gpus_per_run:g} must be 0, a fraction up to 1 (0.25: four runs a GPU) "
                        "or a whole number")
    if max_retries < 0:
        raise UserError(f"--max-retries {max_retries} must be 0 or more")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'resviz[ray]'") from None
    return ray


def _finished_rows(configs: list[TrainConfig], out: Path) -> tuple[list[dict], list[TrainConfig]]:
    """Summary rows of the runs already finished (no task for them), and the configs still to run. A folder
    holding a different config is refused here, before any task starts."""
    rows, todo = [], []
    for config in configs:
        result = finished_result(config, out / config.run_id)
        if result is None:
            todo.append(config)
        else:
            rows.append(summary_row(result))
    return rows, todo


def _table(rows: list[dict], configs: list[TrainConfig]) -> pd.DataFrame:
    table = summary_table(rows, configs)
    table.attrs["placement"] = {r["run"]: r["placement"] for r in rows if r.get("placement")}
    return table


# ------------------------------------------------------------------------------ the cluster
def _connect(ray, address: str | None, temp: str | None = None) -> bool:
    """Join the cluster at `address`, or start a private one on 127.0.0.1 (in the confined child that
    `resviz.sweeps.private_cluster` starts); True when this call started it. A process already connected (a
    notebook, the tests) keeps its connection."""
    if address is not None:
        _check_address(address)
    if ray.is_initialized():
        return False
    if address is None:
        os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # agents start slowly on busy CPUs
        try:  # "local": a new cluster, never one that /tmp/ray/ray_current_cluster or `ps` names; its own temp dir
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     _temp_dir=temp)
        except Exception as err:  # Ray raises a bare Exception when its processes start too slowly
            if "timed out during startup" not in str(err):
                raise
            raise UserError(f"Ray did not start on this machine within its time limit (busy CPUs?); run again, "
                            f"or start it once with `{HEAD_COMMAND}` and pass --address auto") from None
        return True
    target = _resolve_auto(address) if address == "auto" else address  # a UserError of its own, not caught below
    if address == "auto":
        _send_token_as_ray_auto_does()
    try:
        ray.init(address=target)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if _asks_for_a_token(err):
            raise UserError(f"the Ray cluster at --address {address} asks for Ray's authentication token, which "
                            f"this process does not send; export {AUTH_MODE}=token (the cluster's token in "
                            "~/.ray/auth_token or $RAY_AUTH_TOKEN) and run again") from None
        fix = (f"start one with `{HEAD_COMMAND}`, or drop --address to let resviz start a private one"
               if address == "auto" else f"check it with `ray status --address {address}`")
        raise UserError(f"cannot join the Ray cluster at --address {address} ({first_line(err)}); {fix}") from None
    return True


def _send_token_as_ray_auto_does() -> None:
    """`--address auto` joins a cluster of this machine as Ray's own `auto` does: with token authentication on
    where a token is found (~/.ray/auth_token, $RAY_AUTH_TOKEN) and $RAY_AUTH_MODE does not say otherwise.
    resviz resolves `auto` to HOST:PORT itself, and Ray never sends its token to an address it was given."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _asks_for_a_token(err: BaseException | None) -> bool:
    """Whether joining failed because the cluster wants Ray's token (the cause sits deep in Ray's chain)."""
    while err is not None:
        if type(err).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _resolve_auto(address: str) -> str:
    """`--address auto` as the HOST:PORT of the user's running cluster, checked to answer within seconds: Ray's own
    search (RAY_ADDRESS, ray_current_cluster, `ps`) can find a cluster it cannot reach (a private sweep's, in its
    own network namespace; a dead one) and retry it forever."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as err:
        found, why = None, first_line(err)
    else:
        why = "none found"
    if not found:
        raise UserError(f"--address auto finds no Ray cluster on this machine ({why}); start one with "
                        f"`{HEAD_COMMAND}`, or drop --address to let resviz start a private one")
    _check_address(found, shown=f"auto ({found})")
    return found


def _check_address(address: str, shown: str | None = None) -> None:
    """`auto`, HOST:PORT or ray://HOST:PORT, with something listening there; one line naming it otherwise."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not auto or HOST:PORT; pass the head node's address, e.g. "
                        f"--address 10.0.0.5:6379 (what `ray start --head` printed), or --address auto on a node")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserError(f"no Ray cluster answers at --address {shown or address} ({err.strerror or err}); start "
                        f"one with `{HEAD_COMMAND}` or fix the address") from None


def gpus_for_each_run(ray, gpus_per_run: float | None, configs: list[TrainConfig]) -> float:
    """The GPUs each run asks for: as given, else 1 when the cluster has GPUs and a run may use one."""
    if gpus_per_run is not None:
        return float(gpus_per_run)
    wants_gpu = any(c.device != "cpu" for c in configs)
    return 1.0 if wants_gpu and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def nodes_that_fit(ray, cpus: float, gpus: float) -> list[dict]:
    """The alive nodes that can hold one run; refuses resources that fit no node (the tasks would wait forever)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    fit = [n for n in alive if n["Resources"].get("CPU", 0) >= cpus and n["Resources"].get("GPU", 0) >= gpus]
    if not fit:
        have = ", ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU "
                         f"{n['Resources'].get('GPU', 0):g} GPU" for n in alive)
        raise UserError(f"no Ray node has --cpus-per-run {cpus:g} and --gpus-per-run {gpus:g} free ({have}); "
                        "lower them or add nodes")
    return fit


def _write_probe(folder: str, node_id: str) -> str:
    """Ray task: write `folder/<node_id>`; '' on success, else the error (the folder must already exist)."""
    try:
        (Path(folder) / node_id).write_text(node_id)  # no parents made: a node that does not see it fails
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return ""


def check_storage(ray, out: Path, nodes: list[dict]) -> None:
    """Refuse an `out` that a node which can run the grid cannot write, or whose writes this machine does not
    see: every node writes a file into a probe folder the driver made, and the driver reads them all back."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = out / f".resviz-probe-{uuid.uuid4().hex[:8]}"
    probe.mkdir()
    task = ray.remote(_write_probe)
    try:
        refs = [task.options(num_cpus=0, max_retries=0,
                             scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe), n["NodeID"]) for n in nodes]
        errors = ray.get(refs, timeout=300)
        for node, error in zip(nodes, errors):
            where = f"Ray node {node['NodeManagerAddress']}"
            if error:
                raise UserError(f"--out {out} is not writable from {where} ({error}); {SHARED_CHECK}")
            if not (probe / node["NodeID"]).is_file():
                raise UserError(f"--out {out} is not shared: {where} wrote there but this machine does not see "
                                f"it; {SHARED_CHECK}")
    finally:
        shutil.rmtree(probe, ignore_errors=True)


# ------------------------------------------------------------------------------ the tasks
def _train_task(config_dict: dict, out: str, threads: int, gpus: float) -> dict:
    """Ray task: train one run into out/<run_id> (resuming it from its checkpoint) and return its summary
    row with what Ray gave it. The run's own failures come back as a row; only a dead worker or node makes
    Ray run this again."""
    import ray

    config = TrainConfig.from_dict(config_dict)
    if gpus == 0 and config.device == "auto":
        config = dataclasses.replace(config, device="cpu")  # a run given no GPU must not take one
    elif gpus > 0 and config.device.startswith("cuda"):
        config = dataclasses.replace(config, device="cuda")  # Ray's CUDA_VISIBLE_DEVICES: its device is cuda:0
    row = run_one(config, out, threads)
    context = ray.get_runtime_context()
    row["placement"] = {"node": context.get_node_id(), "gpu_ids": list(context.get_accelerator_ids().get("GPU", [])),
                        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
                        "device": config.device, "interfaces": _interfaces()}
    return row


def _run_tasks(ray, configs: list[TrainConfig], out: Path, *, cpus_per_run: float, gpus_per_run: float,
               max_retries: int, progress: bool) -> list[dict]:
    """One task per config; a progress bar for the grid and a line per finished run. Ctrl-C cancels them."""
    if gpus_per_run == 0 and any(c.device.startswith("cuda") for c in configs):
        raise UserError("--device cuda needs a GPU per run: pass --gpus-per-run (e.g. 0.25 or 1) with --engine ray")
    task = ray.remote(_train_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries,
                                           retry_exceptions=False)
    threads = max(1, int(cpus_per_run))
    refs = {task.remote(dataclasses.replace(c, progress=False).to_dict(), str(out), threads, gpus_per_run): c
            for c in configs}
    bar = tqdm(total=len(refs), desc="sweep (ray)", unit="run", disable=not progress, dynamic_ncols=True)
    rows, pending = [], list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)
            for ref in ready:
                row = _outcome(ray, ref, refs[ref], out, max_retries)
                rows.append(row)
                if progress:
                    bar.write(_line(row))
                bar.update(1)
            bar.set_postfix_str(f"{sum(steps_done(c, out) for c in configs)}/{sum(c.steps for c in configs)} steps")
    except KeyboardInterrupt:
        _cancel(ray, pending, refs, out)
        raise
    finally:
        bar.close()
    return rows


def _interfaces() -> list[str]:
    """The network interfaces this process sees (in a task of the confined private cluster: ["lo"])."""
    return sorted(name for _, name in socket.if_nameindex())


def _outcome(ray, ref, config: TrainConfig, out: Path, max_retries: int) -> dict:
    """The task's summary row; a task whose worker died more than `max_retries` times is marked interrupted
    (its checkpoint stays: the next sweep resumes it)."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        reason = "cancelled; run the sweep again to resume"
    except ray.exceptions.RayError as err:
        reason = (f"Ray worker or node died {max_retries + 1} times ({first_line(err, with_type=True)}); "
                  "run the sweep again to resume from its checkpoint")
    folder = out / config.run_id
    step = int(runfolder.read_status(folder).get("step", 0) or 0)
    if runfolder.is_run_folder(folder):
        runfolder.write_status(folder, "interrupted", reason, step=step)
    nan = float("nan")
    return {"run": config.run_id, "status": "interrupted", "step": step, "train_error": nan, "test_error": nan,
            "seconds": nan, "reason": reason}


def _line(row: dict) -> str:
    """One line for a finished run: status, step, test error, seconds, where it ran, and why if it failed."""
    err = row["test_error"]
    text = f"{row['run']}: {row['status']} at step {row['step']}"
    if err == err:  # not NaN
        text += f", test error {100 * err:.2f} %"
    if row["seconds"] == row["seconds"]:
        text += f", {row['seconds']:.0f} s"
    placement = row.get("placement") or {}
    if placement.get("gpu_ids"):
        text += f" (GPU {','.join(placement['gpu_ids'])})"
    if row["status"] not in ("done",) and row.get("reason"):
        text += f": {row['reason']}"
    return text


def _cancel(ray, pending: list, refs: dict, out: Path) -> None:
    """Cancel the grid's tasks: a running run gets a KeyboardInterrupt, checkpoints and marks itself
    interrupted (resumable); a queued one never starts. Waits for them to let go; a run whose worker let go
    without a status (killed) is marked interrupted here, under its lock."""
    for ref in pending:
        ray.cancel(ref)
    if pending:
        ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
    for ref in pending:
        mark_interrupted(out / refs[ref].run_id, "cancelled with the sweep; run the same command again to resume")
    print(f"sweep: cancelled {len(pending)} runs; run the same command again to resume them")


def mark_interrupted(folder: Path, reason: str) -> None:
    """A run left `running` by a process that is gone: `interrupted` at its last step, if nobody holds it."""
    if not runfolder.is_run_folder(folder) or runfolder.read_status(folder).get("status") != "running":
        return
    try:
        with runfolder.run_lock(folder):
            step = int(runfolder.read_status(folder).get("step", 0) or 0)
            runfolder.write_status(folder, "interrupted", reason, step=step)
    except RunBusy:
        pass  # a live worker still holds it: it marks itself


__all__ = ["check_storage", "gpus_for_each_run", "nodes_that_fit", "run_grid_on_ray"]
