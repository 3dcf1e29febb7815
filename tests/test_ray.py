"""Sweeps on Ray (resviz.sweeps.ray_engine) on a real local Ray cluster: the same runs as the local engine, a
killed worker's run resumed by Ray's retry, a diverging run recorded and not retried, fractional GPU placement
(GPUs declared to Ray without hardware), the storage probe, and bad addresses."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from resviz import runfolder, runs
from resviz.errors import UserError
from resviz.sweeps import grid, run_grid_on_ray, run_sweep
from resviz.sweeps.command import add_sweep_arguments, dispatch
from resviz.train import train
from helpers import image_tree, tiny

ray = pytest.importorskip("ray")
from resviz.sweeps.ray_engine import check_storage, gpus_for_each_run, nodes_that_fit  # noqa: E402


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_address_and_options_are_one_line(tmp_path, data_root):
    configs = [tiny(data_root)]
    with pytest.raises(UserError, match=r"--address 'nohost' is not auto or HOST:PORT; pass the head node"):
        dispatch(_parse("--engine", "ray", "--address", "nohost"), configs, tmp_path)
    with pytest.raises(UserError, match=r"no Ray cluster answers at --address 127.0.0.1:1 \(Connection refused\); "
                                        r"start one with `ray start --head"):
        dispatch(_parse("--engine", "ray", "--address", "127.0.0.1:1"), configs, tmp_path)
    with pytest.raises(UserError, match="--address, --gpus-per-run only apply to --engine ray"):
        dispatch(_parse("--address", "auto", "--gpus-per-run", "0.5"), configs, tmp_path)
    with pytest.raises(UserError, match="--workers is for --engine local"):
        dispatch(_parse("--engine", "ray", "--workers", "2"), configs, tmp_path)
    with pytest.raises(UserError, match=r"--gpus-per-run 1.5 must be 0, a fraction up to 1"):
        run_grid_on_ray(configs, tmp_path, gpus_per_run=1.5)
    assert not ray.is_initialized()  # all refused before any cluster was started or joined


@pytest.fixture(scope="module")
def cluster():
    """A real Ray instance on 127.0.0.1: 2 CPUs, and 2 GPUs declared without hardware. On a busy 2-core
    machine Ray's agents can take longer than the raylet waits for them by default: give them 2 min. Every test
    on it is marked slow: its start (~16 s on 2 cores) lands on whichever runs first, and each new Ray worker
    imports torch before its first run."""
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    ray.init(num_cpus=2, num_gpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
    yield ray
    ray.shutdown()


def _losses(folder) -> list[float]:
    return pd.read_parquet(folder / "metrics.parquet")["loss"].tolist()


@pytest.mark.slow  # on the cluster: see its fixture
def test_grid_equals_the_local_engine_run_for_run(cluster, tmp_path, data_root):
    configs = grid(tiny(data_root, steps=20), archs=("plain", "resnet"), seeds=(0, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (cpus_per_run=1): the same kernels, the same floats
    try:
        local = run_sweep(configs, tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    table = run_grid_on_ray(configs, tmp_path / "ray", gpus_per_run=0, progress=False)
    assert table["run"].tolist() == [c.run_id for c in configs]
    assert table["status"].tolist() == ["done"] * 4 and table["step"].tolist() == [20] * 4
    pd.testing.assert_frame_equal(table[["run", "train_error", "test_error"]], local[["run", "train_error", "test_error"]])
    for c in configs:
        assert _losses(tmp_path / "ray" / c.run_id) == _losses(tmp_path / "local" / c.run_id)
        a = pd.read_parquet(tmp_path / "ray" / c.run_id / "stats.parquet")
        b = pd.read_parquet(tmp_path / "local" / c.run_id / "stats.parquet")
        pd.testing.assert_frame_equal(a, b)
    assert {p["device"] for p in table.attrs["placement"].values()} == {"cpu"}  # no GPU given: none taken
    assert len(runs.load(tmp_path / "ray")) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*") if p.is_file()}
    again = run_grid_on_ray(configs, tmp_path / "ray", gpus_per_run=0, progress=False)
    assert again["status"].tolist() == ["done"] * 4 and again.attrs["placement"] == {}  # no task: all skipped
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*") if p.is_file()} == stamps


def _kill_at_checkpoint(folder, killed: list) -> None:
    """Wait for the run's first checkpoint, then SIGKILL the Ray worker process training it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = runfolder.read_status(folder) if folder.is_dir() else {}
        if status.get("status") == "running" and status.get("step", 0) >= 10 and status.get("pid"):
            os.kill(status["pid"], signal.SIGKILL)
            killed.append(status["pid"])
            return
        time.sleep(0.02)


@pytest.mark.slow  # on the cluster: see its fixture
def test_killed_worker_is_retried_and_resumes_to_the_uninterrupted_run(cluster, tmp_path, data_root):
    config = tiny(data_root, steps=80)
    torch.set_num_threads(1)
    reference = train(config, tmp_path / "reference")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_at_checkpoint, args=(tmp_path / "ray" / config.run_id, killed))
    killer.start()
    table = run_grid_on_ray([config], tmp_path / "ray", gpus_per_run=0, max_retries=2, progress=False)
    killer.join()
    assert len(killed) == 1
    assert table["status"].tolist() == ["done"] and table["step"].tolist() == [80]
    assert table.attrs["placement"][config.run_id]["pid"] != killed[0]  # a second attempt finished it
    folder = tmp_path / "ray" / config.run_id
    assert _losses(folder) == _losses(reference.folder)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "stats.parquet"),
                                  pd.read_parquet(reference.folder / "stats.parquet"))


@pytest.mark.slow  # on the cluster: see its fixture
def test_a_run_failing_for_its_own_reasons_is_recorded_not_retried(cluster, tmp_path, data_root):
    diverging = tiny(data_root, norm="none", lr=50.0, steps=40)
    too_big = tiny(data_root, batch_size=5000, steps=10)  # larger than the training set: the run's own error
    table = run_grid_on_ray([diverging, too_big], tmp_path, gpus_per_run=0, max_retries=3, progress=False)
    assert table["status"].tolist() == ["diverged", "failed"]
    assert "batch_size=5000 is larger than the training set" in table["reason"].iloc[1]
    assert runfolder.read_status(tmp_path / diverging.run_id)["status"] == "diverged"
    # each came back as the task's own result (the task returned, it did not raise into Ray's retries)
    assert set(table.attrs["placement"]) == {diverging.run_id, too_big.run_id}


@pytest.mark.slow  # on the cluster: see its fixture
def test_fractional_gpus_are_placed_by_ray(cluster, tmp_path, data_root):
    configs = grid(tiny(data_root, steps=5, log_every=5, eval_every=5, checkpoint_every=5), seeds=(0, 1, 2, 3))
    assert gpus_for_each_run(cluster, None, configs) == 1.0  # the cluster has GPUs: one per run by default
    table = run_grid_on_ray(configs, tmp_path, gpus_per_run=0.5, progress=False)
    assert table["status"].tolist() == ["done"] * 4
    given = table.attrs["placement"]
    assert set(given) == {c.run_id for c in configs}
    for placement in given.values():
        assert len(placement["gpu_ids"]) == 1 and placement["gpu_ids"][0] in ("0", "1")
        assert placement["cuda_visible_devices"] == placement["gpu_ids"][0]  # a run sees only its own GPU
    with pytest.raises(UserError, match=r"no Ray node has --cpus-per-run 1 and --gpus-per-run 3 free "
                                        r"\([0-9a-f.:]+: 2 CPU 2 GPU\)"):
        nodes_that_fit(cluster, 1, 3)


@pytest.mark.slow  # on the cluster: see its fixture
def test_storage_probe_writes_from_every_node_and_cleans_up(cluster, tmp_path):
    nodes = nodes_that_fit(cluster, 1, 0)
    check_storage(cluster, tmp_path, nodes)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ a cluster the user started
RAY = Path(sys.executable).with_name("ray")  # the `ray` command of this environment
MARK = "RESVIZ_TEST_CLUSTER"  # in the environment of every process of the cluster a test starts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_marked(mark: str) -> list[int]:
    """The live processes whose environment holds MARK=mark: the cluster a test started, its workers too."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"{MARK}={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def _stop_marked(mark: str) -> None:
    """Stop the cluster a test started, and nothing else: `ray stop` stops every Ray instance of the machine
    (it finds them by process name), other sessions' too. SIGTERM, then SIGKILL to what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        for pid in _processes_marked(mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _processes_marked(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _processes_marked(mark):
            return


@pytest.fixture
def started_by_hand(tmp_path):
    """A one-node Ray cluster started as a user starts one on a head node (`ray start --head`, 1 CPU) in a
    directory of its own; yields (its address, that directory)."""
    if not RAY.is_file():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    where, mark = tmp_path / "ray-started-here", uuid.uuid4().hex
    where.mkdir()
    temp = tempfile.mkdtemp(prefix="rz-")  # short: Ray's socket paths live under it
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}, MARK: mark,  # Ray's default auth
           "RAY_raylet_start_wait_time_s": "120", "OMP_NUM_THREADS": "1"}
    try:
        started = subprocess.run([str(RAY), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                                  "--num-cpus", "1", "--temp-dir", temp, "--include-dashboard", "false",
                                  "--disable-usage-stats"], cwd=where, env=env, capture_output=True, text=True,
                                 timeout=300)
        if "The current node timed out during startup" in started.stdout + started.stderr:
            pytest.skip("Ray's node did not start on this machine (raylet timed out; a loaded CPU)")
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}", where
    finally:
        _stop_marked(mark)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # a cluster started with `ray start`, one 4-step run on it: ~40 s on 2 busy cores
def test_relative_paths_on_a_joined_cluster_mean_what_they_mean_where_the_command_runs(started_by_hand, tmp_path):
    """A Ray worker runs in the directory where `ray start` ran, not the driver's: a relative --root, --out or
    image folder must be made absolute on the driver, or the runs read and write the wrong places (here: an
    image folder that does not exist where the cluster started). `ray start` turns Ray's token authentication on:
    joined by address without RAY_AUTH_MODE=token, one line says so (Ray sends no token to a given address);
    `--address auto` sends it, as Ray's own auto does."""
    address, started_here = started_by_hand
    here = tmp_path / "here"  # where the user types the command
    image_tree(here / "imgs")
    command = [sys.executable, "-m", "resviz.cli", "sweep", "--engine", "ray", "--address", address, "--depths", "8",
               "--arch", "resnet", "--seeds", "0", "--dataset", "imagefolder:imgs", "--root", "data", "--width", "4",
               "--steps", "4", "--batch-size", "4", "--log-every", "2", "--eval-every", "2", "--checkpoint-every",
               "2", "--record-every", "2", "--eval-batch-size", "100", "--no-progress", "--out", "runs"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    refused = subprocess.run(command, cwd=here, capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (  # Ray's own lines above it
        f"resviz: error: the Ray cluster at --address {address} asks for Ray's authentication token, which this "
        "process does not send; export RAY_AUTH_MODE=token (the cluster's token in ~/.ray/auth_token or "
        "$RAY_AUTH_TOKEN) and run again"), refused.stderr[-3000:]
    done = subprocess.run(command, cwd=here, capture_output=True, text=True, timeout=600,
                          env={**env, "RAY_AUTH_MODE": "token"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = runs.load(here / "runs").status
    assert status["status"].tolist() == ["done"] and status["step"].tolist() == [4]
    config = runfolder.read_config(here / "runs" / status["run_id"].iloc[0])
    assert config["dataset"] == f"imagefolder:{here / 'imgs'}" and config["root"] == str((here / "data").resolve())
    assert len(list((here / "data").glob("resviz-imagefolder-imgs-*.pt"))) == 1  # the cache where --root says
    assert list(started_here.iterdir()) == []  # nothing read or written where the cluster started
    seed_1 = [*command[:command.index("--address") + 1], "auto", *command[command.index("--address") + 2:]]
    seed_1[seed_1.index("--seeds") + 1] = "1"  # another run: a finished one needs no cluster
    auto = subprocess.run(seed_1, cwd=here, capture_output=True, text=True, timeout=600,
                          env={**env, "RAY_ADDRESS": address})  # what Ray's search for auto reads first
    assert auto.returncode == 0, auto.stdout[-3000:] + auto.stderr[-3000:]  # the token sent as Ray's auto does

