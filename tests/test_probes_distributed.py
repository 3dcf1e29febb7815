"""The Recorder under torch.distributed: real `torchrun` launches of 2 CPU processes (gloo) running a user's
script (tests/distributed_worker.py), compared with one process on the whole batch; the one-line refusals
when the ranks disagree. Every launch is bounded by a subprocess timeout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist

from resviz.runfolder import read_status
from resviz.errors import UserError
from resviz.probes import distributed

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "distributed_worker.py")
KEY = ["step", "layer", "metric"]


def environment(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", **extra}


def torchrun(*args: str, nproc: int = 2, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N` (a free port: other jobs on the machine may hold 29500)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           *args], capture_output=True, text=True, timeout=timeout, env=environment(**env))


def one_process(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=environment())


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame, rtol: float) -> None:
    """The same (step, layer, metric) rows, values equal within rtol."""
    assert len(got) == len(want) > 0
    both = want.merge(got, on=KEY, suffixes=("_want", ""), validate="one_to_one")
    assert len(both) == len(want)
    np.testing.assert_allclose(both["value"], both["value_want"], rtol=rtol, atol=0)


def assert_rank0_wrote_the_one_process_table(ddp: Path, one: Path, steps: int) -> None:
    """A trainer callback's job (tests/*_ddp_worker.py): one run folder under ddp/runs, named with rank 0's pid
    (the agreed run_id), written by rank 0 alone (rank 1 had no writer), whose stats equal the one-process run's
    in one/runs."""
    folders = list((ddp / "runs").iterdir())
    assert len(folders) == 1
    pid0, writer0 = (ddp / "pid-rank0").read_text().split()
    _, writer1 = (ddp / "pid-rank1").read_text().split()
    assert (writer0, writer1) == ("True", "False") and folders[0].name.endswith(f"-{pid0}")
    assert read_status(folders[0])["status"] == "done"
    got = pd.read_parquet(folders[0] / "stats.parquet")
    (reference,) = list((one / "runs").iterdir())
    assert sorted(got["step"].unique()) == list(range(steps))
    assert_same_rows(got, pd.read_parquet(reference / "stats.parquet"), rtol=1e-5)


@pytest.mark.slow
def test_ddp_and_fsdp_statistics_equal_one_process_on_the_whole_batch(tmp_path):
    dist_out, ref_out = tmp_path / "ddp", tmp_path / "one"
    dist_out.mkdir(), ref_out.mkdir()
    run = torchrun(WORKER, str(dist_out), "group", "none", "gpt2", "fsdp")
    assert run.returncode == 0, run.stderr[-3000:]
    ref = one_process(WORKER, str(ref_out), "group", "none", "gpt2")
    assert ref.returncode == 0, ref.stderr[-3000:]
    for case, base in (("group", "group"), ("none", "none"), ("gpt2", "gpt2"), ("fsdp", "group")):
        want = pd.read_parquet(ref_out / f"{base}-rank0.parquet")
        rank0 = pd.read_parquet(dist_out / f"{case}-rank0.parquet")
        rank1 = pd.read_parquet(dist_out / f"{case}-rank1.parquet")
        assert set(want["metric"]) >= {"response_std", "branch_std", "act_grad_norm", "grad_norm", "grad_rel_norm"}
        assert_same_rows(rank0, want, rtol=1e-5)
        pd.testing.assert_frame_equal(rank0, rank1)  # every rank returns the same (global) frame


@pytest.mark.slow
def test_ranks_that_disagree_fail_in_one_line_within_the_timeout(tmp_path):
    run = torchrun(WORKER, str(tmp_path), "every", "steps", "rank0-only", timeout=240, RESVIZ_DIST_TIMEOUT="5")
    errors = {p.name: p.read_text() for p in tmp_path.glob("*.error")}
    for rank in (0, 1):
        assert errors[f"every-rank{rank}.error"] == (
            "Recorder every differs between ranks (rank 0: 1, rank 1: 2): under torch.distributed every rank must "
            "record the same model with the same every and flush_every")
        steps = errors[f"steps-rank{rank}.error"]
        assert steps.startswith(f"Recorder on rank {rank}: the ranks flushed different recorded steps")
    assert "steps [1, 2, 3]" in errors["steps-rank1.error"]
    lone = errors["rank0-only-rank0.error"]
    assert lone.startswith("Recorder on rank 0 of 2: not every rank entered a Recorder (one is gone or did not "
                           "come within 5 s: ")
    assert "\n" not in lone and "rank0-only-rank1.error" not in errors
    assert run.returncode != 0  # the job ends (rank 1's DDP step loses its peer), it does not hang


def test_one_process_is_untouched_and_the_timeout_is_checked(monkeypatch):
    assert distributed.world() == (0, 1) and distributed.is_writer()
    from resviz.probes.plan import build_plan
    import resviz

    plan = build_plan(resviz.cifar_resnet(8, width=8), frozenset({"response_std"}))
    assert distributed.connect(plan, 1, 64, {}) is None
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match=r"RESVIZ_DIST_TIMEOUT='soon' must be a number of seconds > 0"):
        distributed.timeout_seconds()


def test_local_is_the_identity_on_plain_tensors():
    t = torch.ones(3)
    assert distributed.local(t) is t and distributed.local(None) is None


@pytest.fixture
def one_rank_group():
    """A real gloo process group of one rank (a file store in tmp), destroyed after the test."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method=f"file://{d}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            distributed._GROUP.clear()
            dist.destroy_process_group()


def test_partial_sums_round_trip_in_both_moment_forms(one_rank_group):
    """On one rank the collective is the identity: the sums form (CPU) comes back as it was, and CUDA's
    mean/variance form is turned into sums that derive the same statistics (the GPU path, checked on the CPU)."""
    import resviz
    from resviz.probes import Recorder
    from resviz.probes.reductions import derive

    torch.manual_seed(0)
    net = resviz.cifar_resnet(8, width=8, norm="group")
    metrics = ["response_std", "branch_std", "channel_var", "act_grad_norm", "grad_norm"]
    with Recorder(net, every=1, metrics=metrics) as rec:
        assert rec._dist is None  # a world of one rank: the Recorder is untouched
        torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        rec.end_step(0)
        raw = rec._buf[:1].numpy().astype(np.float64)  # (1, K) sums form
        plan = rec._plan
    layout = distributed._layout(plan, {n: 1.0 for n, _ in plan.params})
    sync = distributed.Sync(plan, layout, distributed._group(5), flush_every=4, seconds=5)
    want, valid = derive(raw, plan, False)
    got, got_valid = derive(sync.reduce(raw, np.array([0]), central=False), plan, False)
    np.testing.assert_array_equal(got_valid, valid)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-12)
    central = raw.copy()  # the same moments as CUDA's var_mean writes them
    n = raw[:, layout.count][:, layout.owner]
    mean = raw[:, layout.first] / n
    central[:, layout.first], central[:, layout.second] = mean, raw[:, layout.second] / n - mean**2
    got, _ = derive(sync.reduce(central, np.array([0]), central=True), plan, False)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-9)


@pytest.mark.slow
def test_a_rank_killed_mid_run_and_the_job_restarted_resumes_to_the_uninterrupted_table(tmp_path):
    """Rank 1 dies (SIGKILL) at step 3; the job ends (rank 0's flush or DDP step loses its peer, in one line);
    the job started again, as a scheduler requeues it, resumes from the checkpoint at step 2. Every job that
    finishes exits 0: the Recorder's closing flush, its last collective, leaves nothing for gloo's worker thread
    to free after the interpreter began to shut down (it aborted about one exit in seven before)."""
    worker = str(ROOT / "tests" / "resume_worker.py")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    killed.mkdir(), whole.mkdir()
    first = torchrun(worker, str(killed), "3", timeout=300, RESVIZ_DIST_TIMEOUT="60")
    assert first.returncode != 0 and not (killed / "resumed-at").exists()
    again = torchrun(worker, str(killed), "-1", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (killed / "resumed-at").read_text() == "2"
    run = torchrun(worker, str(whole), "-1", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got, want = pd.read_parquet(killed / "stats.parquet"), pd.read_parquet(whole / "stats.parquet")
    assert sorted(got["step"].unique()) == list(range(6))
    assert_same_rows(got, want, rtol=1e-6)


@pytest.mark.slow
def test_ray_train_torch_trainer_records_the_one_process_statistics(tmp_path):
    pytest.importorskip("ray.train.torch")
    (tmp_path / "ray").mkdir(), (tmp_path / "one").mkdir()
    tests = str(ROOT / "tests")
    path = os.pathsep.join([tests, environment()["PYTHONPATH"]])  # the workers import distributed_worker
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "ray_train_worker.py"), str(tmp_path / "ray"), "group"],
                          capture_output=True, text=True, timeout=480, env=environment(PYTHONPATH=path))
    if "The current node timed out during startup" in done.stderr:  # Ray's own start, before any resviz code
        pytest.skip("Ray's local node did not start on this machine (raylet timed out; a loaded CPU)")
    assert done.returncode == 0, done.stderr[-3000:]
    ref = one_process(WORKER, str(tmp_path / "one"), "group")
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = pd.read_parquet(tmp_path / "one" / "group-rank0.parquet")
    rank0 = pd.read_parquet(tmp_path / "ray" / "group-rank0.parquet")
    assert_same_rows(rank0, want, rtol=1e-5)
    pd.testing.assert_frame_equal(rank0, pd.read_parquet(tmp_path / "ray" / "group-rank1.parquet"))
