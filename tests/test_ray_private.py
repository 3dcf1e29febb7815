"""`resviz sweep --engine ray` with no --address, as a user types it: the private Ray cluster resviz starts lives
in a loopback-only network namespace (the workers training, read from /proc, see only `lo`), the sweep folder is
readable while it runs (what `explore`'s refresh shows), Ctrl-C on the driver and then a killed driver both
leave every run resumable, and the same command then finishes them, equal to uninterrupted runs. The Python API
(`run_grid_on_ray` with no address) takes the same confined path.

Each command starts a real Ray cluster (20-40 s on 2 busy cores); no Ray is started in this process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from resviz import runfolder, runs
from resviz.errors import UserError
from resviz.sweeps import grid, run_grid_on_ray
from resviz.sweeps.private_cluster import namespace_error
from resviz.train import TrainConfig, train
from helpers import tiny

ray = pytest.importorskip("ray")

NO_NAMESPACE = namespace_error()  # None where this machine can make a loopback-only network namespace
confinable = pytest.mark.skipif(NO_NAMESPACE is not None, reason=f"no network namespace here: {NO_NAMESPACE}")

STEPS = 300


def _sweep_command(out: Path, root: Path, steps: int = STEPS, archs: str = "plain,resnet") -> list[str]:
    return [sys.executable, "-m", "resviz.cli", "sweep", "--engine", "ray", "--depths", "8", "--arch", archs,
            "--seeds", "0", "--dataset", "digits", "--root", str(root), "--width", "8", "--steps", str(steps),
            "--batch-size", "32", "--log-every", "10", "--eval-every", "100", "--checkpoint-every", "10",
            "--record-every", "10", "--eval-batch-size", "400", "--no-progress", "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_raylet_start_wait_time_s": "120"}


def _start(out: Path, root: Path) -> subprocess.Popen:
    return subprocess.Popen(_sweep_command(out, root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), start_new_session=True)


def _wait_until_both_train(out: Path, proc: subprocess.Popen, past: dict | None = None) -> pd.DataFrame:
    """Poll the sweep folder as `explore` does until both runs are running, each past its step in `past`
    (default: step 30); the status table."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            status = runs.load(out).status
        except (FileNotFoundError, ValueError):
            status = None
        if status is not None and len(status) == 2 and (status["status"] == "running").all() and all(
                step > (past or {}).get(run_id, 29) for run_id, step in zip(status["run_id"], status["step"])):
            return status
        time.sleep(0.2)
    raise AssertionError("the runs did not start training within 5 minutes")


def _rerun_and_compare(out: Path, root: Path, tmp_path: Path) -> None:
    """The same command finishes every cut run; each equals the uninterrupted run of its config. The reference
    runs train after the command (not beside it: a busy CPU can keep Ray's node from starting in its time limit)."""
    done = subprocess.run(_sweep_command(out, root), capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    torch.set_num_threads(1)  # each Ray task trains with one thread (--cpus-per-run 1)
    references = {}
    for folder in sorted(p for p in out.iterdir() if runfolder.is_run_folder(p)):
        stored = {k: v for k, v in runfolder.read_config(folder).items() if k not in ("run_id", "versions")}
        references[folder] = train(TrainConfig.from_dict(stored), tmp_path / "reference").folder
    status = runs.load(out).status
    assert sorted(status["status"]) == ["done", "done"] and (status["step"] == STEPS).all()
    for folder, reference in references.items():
        assert pd.read_parquet(folder / "metrics.parquet")["loss"].tolist() == \
            pd.read_parquet(reference / "metrics.parquet")["loss"].tolist()
        pd.testing.assert_frame_equal(pd.read_parquet(folder / "stats.parquet"),
                                      pd.read_parquet(reference / "stats.parquet"))


def _netns_of(pid: int) -> tuple[str, list[str]]:
    """A process's network namespace and the interfaces in it, read from /proc."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return os.readlink(f"/proc/{pid}/ns/net"), sorted(line.split(":")[0].strip() for line in lines)


def _wait_until_interrupted(out: Path) -> pd.DataFrame:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and set(runs.load(out).status["status"]) != {"interrupted"}:
        time.sleep(0.5)
    status = runs.load(out).status
    assert set(status["status"]) == {"interrupted"}, status
    return status


@pytest.mark.slow  # three private clusters started and stopped, one per command: ~4 min on 2 cores
@confinable
def test_a_confined_sweep_survives_ctrl_c_and_a_killed_driver_and_resumes_exactly(tmp_path):
    out, root = tmp_path / "sweep", tmp_path / "data"
    proc = _start(out, root)
    live = _wait_until_both_train(out, proc)
    assert len(runs.load(out).stats) > 0  # what explore's refresh shows while the grid runs: runs and rows
    for run_id in live["run_id"]:  # the Ray workers training: in their own namespace, with only loopback
        namespace, interfaces = _netns_of(int(runfolder.read_status(out / run_id)["pid"]))
        assert namespace != os.readlink("/proc/self/ns/net") and interfaces == ["lo"]

    proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the driver
    printed, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, printed[-3000:]
    assert "cancelled 2 runs; run the same command again to resume them" in printed
    first_cut = _wait_until_interrupted(out)
    assert (first_cut["step"] < STEPS).all()
    assert all((out / run / "checkpoint.pt").is_file() for run in first_cut["run_id"])

    proc = _start(out, root)  # the same command resumes; this time the driver is killed outright
    _wait_until_both_train(out, proc, past=dict(zip(first_cut["run_id"], first_cut["step"])))
    proc.kill()  # SIGKILL: no handler runs in the driver; the kernel tells the confined child (SIGTERM)
    proc.communicate(timeout=30)
    second_cut = _wait_until_interrupted(out)
    assert (second_cut["step"] < STEPS).all()

    _rerun_and_compare(out, root, tmp_path)  # resumed twice, equal to uninterrupted runs


@pytest.mark.slow  # one private cluster started and stopped, two runs until the signal: 41 s on 2 busy cores
@confinable
def test_sigterm_to_a_confined_sweep_is_ctrl_c_and_exits_143(tmp_path):
    """What `scancel`, a SLURM time limit or a pod's deletion send: the parent forwards SIGTERM to the confined
    child, whose handler (installed after ray.init) cancels the tasks; every run reads interrupted with its
    checkpoint, and the command says so in one line and exits 143 (it used to exit 1 with runs left running)."""
    out, root = tmp_path / "sweep", tmp_path / "data"
    proc = _start(out, root)
    _wait_until_both_train(out, proc)
    proc.send_signal(signal.SIGTERM)
    printed, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, printed[-3000:]
    assert "cancelled 2 runs; run the same command again to resume them" in printed
    assert "resviz: sweep interrupted by SIGTERM" in printed and "Traceback" not in printed
    cut = _wait_until_interrupted(out)
    assert (cut["step"] < STEPS).all() and all((out / run / "checkpoint.pt").is_file() for run in cut["run_id"])


@pytest.mark.slow  # one private cluster started and stopped: ~35 s on 2 cores
@confinable
def test_tasks_of_the_private_cluster_see_only_loopback(tmp_path):
    configs = grid(tiny(str(tmp_path / "data"), steps=10), seeds=(0,))
    table = run_grid_on_ray(configs, tmp_path / "out", gpus_per_run=0, progress=False)
    assert table["status"].tolist() == ["done"]
    placement = table.attrs["placement"][configs[0].run_id]
    assert placement["interfaces"] == ["lo"]  # the namespace has no other interface: nothing listens elsewhere
    assert not ray.is_initialized()  # the cluster lived in the child, and is gone with it


@pytest.mark.slow  # one private cluster started and stopped, one 10-step run: ~35 s on 2 cores
@confinable
def test_a_stale_current_cluster_file_does_not_hold_up_a_private_sweep(tmp_path, monkeypatch):
    """Ray's `ray_current_cluster` file names the cluster a plain `ray.init()` joins; naming a dead one (a
    `ray start` since killed), it made a private sweep retry a GCS connect forever (every 40 s). The private
    cluster is started with address="local", which never reads it. The file is written where Ray looks for it
    under a RAY_TMPDIR of the test's own (not /tmp/ray: other Ray instances on the machine would read it)."""
    from ray._common.utils import get_ray_address_file

    ray_tmp, out, root = tmp_path / "ray-tmpdir", tmp_path / "sweep", tmp_path / "data"
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    stale = Path(get_ray_address_file(None))  # where the installed Ray reads it: $RAY_TMPDIR/ray/ray_current_cluster
    assert stale == ray_tmp / "ray" / "ray_current_cluster"
    stale.parent.mkdir(parents=True)
    stale.write_text("127.0.0.1:1")  # nothing listens there
    done = subprocess.run(_sweep_command(out, root, steps=10, archs="resnet"), capture_output=True, text=True,
                          env=_env(), timeout=600)  # (a hang ends here, failing the test)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = runs.load(out).status
    assert status["status"].tolist() == ["done"] and status["step"].tolist() == [10]
    assert stale.read_text() == "127.0.0.1:1"  # read by nobody, rewritten by nobody


@pytest.mark.skipif(NO_NAMESPACE is None, reason="this machine makes network namespaces: the confined tests run")
def test_without_namespaces_the_private_cluster_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match=r"start Ray yourself \(`ray start --head"):
        run_grid_on_ray([tiny(str(tmp_path / "data"), steps=10)], tmp_path / "out", gpus_per_run=0, progress=False)
    assert not (tmp_path / "out" / tiny(str(tmp_path)).run_id).exists()  # nothing trained outside the namespace
