"""Fault injection: whatever is done to a run (a signal in any phase, a second writer, a dead parent, a damaged
file, a bad flag), running the same command again gives exactly the uninterrupted result, or one line that
says what is wrong and how to fix it. Signals are sent for real (os.kill) from torch's global hooks, so they
land inside a forward, a backward, an optimiser step or an evaluation; resumed runs are compared with an
uninterrupted one on every tensor of the checkpoint and every value of both tables."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from resviz import runfolder, runs, sweeps
from resviz.sweeps import common as sweeps_common
from resviz.cli import main
from resviz.errors import Interrupted
from resviz.train import train
from helpers import TINY, cli, tiny

TIMING = ["seconds", "images_per_s"]  # wall-clock columns: differ between any two runs
STEPS = dict(steps=40, log_every=10, eval_every=20, checkpoint_every=20, record_every=5)


def _config(data_root):
    return tiny(data_root, **STEPS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> Path:
    """The uninterrupted run the cut ones must equal."""
    out = tmp_path_factory.mktemp("reference")
    return train(_config(data_root), out).folder


def assert_same_run(a: Path, b: Path) -> None:
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert ca["step"] == cb["step"] and ca["warmup_until"] == cb["warmup_until"]
    assert ca["model"].keys() == cb["model"].keys()
    for name, tensor in ca["model"].items():  # weights and buffers: running stats, num_batches_tracked
        assert torch.equal(tensor, cb["model"][name]), name
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for field, value in sa[key].items():
            assert torch.equal(value, sb[key][field]), (key, field)
    assert ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
    ma = pd.read_parquet(a / "metrics.parquet").drop(columns=TIMING)
    mb = pd.read_parquet(b / "metrics.parquet").drop(columns=TIMING)
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "stats.parquet"), pd.read_parquet(b / "stats.parquet"),
                                  check_exact=True)
    assert runfolder.read_status(b)["status"] == "done"


class _SignalAt:
    """Send `signum` (`times` times) to this process from inside a phase of training: the `nth` training
    forward, backward or optimiser step, or the first evaluation forward (torch's global hooks)."""

    def __init__(self, phase: str, nth: int, signum=signal.SIGINT, times: int = 1):
        self.phase, self.nth, self.signum, self.times, self.calls, self.handles = phase, nth, signum, times, 0, []

    def _fire(self, *_) -> None:
        self.calls += 1
        if self.calls == self.nth:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    def _forward(self, module, args, output) -> None:
        if isinstance(module, torch.nn.Linear) and module.training == (self.phase == "forward"):
            self._fire()

    def __enter__(self):
        from torch.nn.modules import module as nn_module

        if self.phase in ("forward", "eval"):
            self.handles.append(nn_module.register_module_forward_hook(self._forward))
        elif self.phase == "backward":
            self.handles.append(nn_module.register_module_full_backward_hook(
                lambda m, gi, go: self._fire() if isinstance(m, torch.nn.Linear) else None))
        elif self.phase == "step":
            from torch.optim.optimizer import register_optimizer_step_pre_hook

            self.handles.append(register_optimizer_step_pre_hook(self._fire))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the global hook sees the first conv too
@pytest.mark.parametrize("phase, nth, signum, times", [
    ("forward", 13, signal.SIGINT, 1),   # mid-interval: the logging interval's sums are saved too
    ("backward", 27, signal.SIGTERM, 1),
    ("step", 31, signal.SIGINT, 1),
    ("eval", 2, signal.SIGTERM, 1),      # inside the evaluation at step 20 (a checkpoint step); the first
                                         # eval-mode forward is the held-out Fig. 7 measurement at step 0
    ("forward", 25, signal.SIGINT, 2),   # a second Ctrl-C stops at once: resume from the last checkpoint
])
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_signal_in_any_phase_resumes_exactly(tmp_path, data_root, reference, phase, nth, signum, times):
    config = _config(data_root)
    with _SignalAt(phase, nth, signum, times) as hook, pytest.raises(KeyboardInterrupt) as caught:
        train(config, tmp_path)
    assert hook.calls >= nth
    folder = tmp_path / config.run_id
    status = runfolder.read_status(folder)
    assert status["status"] == "interrupted" and 0 < status["step"] < config.steps
    assert isinstance(caught.value, Interrupted) and caught.value.signum == signum  # a second one too: 128 + signum
    assert train(config, tmp_path).status == "done"
    assert_same_run(reference, folder)


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_a_step_that_outlasts_the_grace_is_abandoned_for_the_last_checkpoint(tmp_path, data_root, reference,
                                                                            monkeypatch):
    """SIGTERM inside a step that goes on far longer than the grace (a 30 s sleep in a forward hook stands for a
    very deep net on a CPU): the step is abandoned within the grace, the run reads interrupted at its last
    checkpoint, and running it again gives exactly the uninterrupted run."""
    from resviz.train import interrupts

    monkeypatch.setattr(interrupts, "GRACE", 0.05)
    calls = []

    def long_step(module, args, output) -> None:
        if isinstance(module, torch.nn.Linear) and module.training:
            calls.append(1)
            if len(calls) == 25:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)

    handle = torch.nn.modules.module.register_module_forward_hook(long_step)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted) as caught:
            train(_config(data_root), tmp_path)
    finally:
        handle.remove()
    assert time.monotonic() - started < 30  # the sleep did not run out: the step was abandoned
    folder = tmp_path / _config(data_root).run_id
    status = runfolder.read_status(folder)
    assert caught.value.signum == signal.SIGTERM and status["status"] == "interrupted" and status["step"] == 20
    at = re.search(r"inside a step that outlasted the 0.05 s grace \(at step (\d+)\)", status["reason"])
    assert at and 20 <= int(at.group(1)) < 25  # a step after the checkpoint at 20, abandoned
    assert train(_config(data_root), tmp_path).status == "done"
    assert_same_run(reference, folder)


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_a_signal_while_setting_up_stops_at_once(tmp_path, data_root, reference):
    """The first eval-mode forward is the held-out measurement in setup: SIGTERM there stops before any step,
    nothing is trained or lost, and the same command then trains the whole run."""
    config = _config(data_root)
    with _SignalAt("eval", 1, signal.SIGTERM), pytest.raises(Interrupted) as caught:
        train(config, tmp_path)
    folder = tmp_path / config.run_id
    status = runfolder.read_status(folder)
    assert caught.value.signum == signal.SIGTERM and "while setting up" in str(caught.value)
    assert status["status"] == "interrupted" and status["step"] == 0 and not (folder / "checkpoint.pt").exists()
    assert train(config, tmp_path).status == "done"
    assert_same_run(reference, folder)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_signal_at_a_random_moment_resumes_exactly(tmp_path, data_root, reference, seed):
    """Ctrl-C at a random moment: stopped and resumed, or (the run finished first, a fast machine) handed back to
    the caller's handler when training ends — never lost and never a half-written run."""
    config = _config(data_root)
    delay = random.Random(seed).uniform(0.05, 1.5)
    handed_back = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: handed_back.append(signum))
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = train(config, tmp_path)
    except Interrupted:
        result = train(config, tmp_path)
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert result.status == "done" and len(handed_back) <= 1
    assert_same_run(reference, tmp_path / config.run_id)


def _popen_train(data_root, out, steps="100000"):
    args = ["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8", "--steps", steps,
            "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "resviz.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, args


def _wait_running(folder: Path, proc, min_step: int = 0, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (folder / "status.json").exists():
            status = runfolder.read_status(folder)
            if status["status"] == "running" and status.get("step", 0) >= min_step and "pid" in status:
                return status
        time.sleep(0.05)
    raise AssertionError(f"the run did not start: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}")


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_sigterm_saves_and_exits_143_and_a_second_writer_is_refused(tmp_path, data_root, capsys):
    proc, args = _popen_train(data_root, tmp_path)
    folder = tmp_path / TINY.run_id
    _wait_running(folder, proc, min_step=10)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(args[:-2] + ["--no-progress", "--out", str(tmp_path)]) == 2  # the second writer
    err = capsys.readouterr().err
    assert f"{folder}" in err and str(proc.pid) in err and "in use" in err and len(err.splitlines()) == 1
    assert {p.name for p in folder.iterdir()} == set(before)
    assert (folder / "config.json").stat().st_mtime_ns == before["config.json"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "SIGTERM" in err
    status = runfolder.read_status(folder)
    assert status["status"] == "interrupted" and status["step"] > 0
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == status["step"]


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_kill_9_leaves_no_running_status_and_a_lock_that_is_taken_over(tmp_path, data_root):
    proc, _ = _popen_train(data_root, tmp_path)
    folder = tmp_path / TINY.run_id
    _wait_running(folder, proc)
    proc.kill()
    proc.wait()
    assert runfolder.read_status(folder)["status"] == "interrupted"
    assert "is gone" in runfolder.read_status(folder)["reason"]
    assert runs.load(tmp_path).status["status"].tolist() == ["interrupted"]  # what the dashboard and report read
    with runfolder.run_lock(folder):  # the dead holder's lock is taken over
        assert (folder / runfolder.LOCK_FILE).read_text().strip() == str(os.getpid())


def test_sweep_skips_a_run_another_process_holds(tmp_path, data_root):
    config = tiny(data_root, steps=10)
    (tmp_path / config.run_id).mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "os.write(fd, str(os.getpid()).encode()); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / config.run_id / runfolder.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        table = sweeps.run_sweep([config], tmp_path, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert table["status"].tolist() == ["busy"] and str(holder.pid) in table["reason"].iloc[0]
    assert not (tmp_path / config.run_id / "config.json").exists()  # nothing touched
    assert sweeps_common.run_one(config.to_dict(), tmp_path)["status"] == "done"  # the lock of the dead holder is free


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_sweep_workers_die_with_their_parent(tmp_path, data_root):
    args = ["sweep", "--dataset", "digits", "--root", data_root, "--depths", "8", "--seeds", "0,1", "--width", "8",
            "--steps", "100000", "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10",
            "--workers", "2", "--no-progress", "--out", str(tmp_path)]
    parent = subprocess.Popen([sys.executable, "-m", "resviz.cli", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    folders = [tmp_path / f"digits-resnet8-batch-scA-w8-s{s}" for s in (0, 1)]
    try:
        pids = [_wait_running(f, parent, timeout=120)["pid"] for f in folders]
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "workers outlived their parent"
    for f in folders:  # they saved themselves on the way out (SIGTERM) or are reported interrupted (pid gone)
        assert runfolder.read_status(f)["status"] == "interrupted"


# ------------------------------------------------------------------------ validation before the first byte
@pytest.mark.parametrize("flag, value, message", [
    ("--momentum", "-5", "--momentum=-5.0 must be in [0, 1)"),
    ("--record-metrics", "foo,bar", "unknown metric(s) ['foo', 'bar']"),
    ("--lr-decay", "-1", "--lr-decay=-1.0 must be in (0, 1]"),
    ("--lr", "inf", "--lr=inf must be a positive number"),
    ("--weight-decay", "nan", "--weight-decay=nan must be zero or positive"),
])
def test_bad_values_refused_before_anything_is_written(tmp_path, data_root, capsys, flag, value, message):
    out = tmp_path / "runs"
    code = main(["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--steps", "10",
                 "--no-progress", "--out", str(out), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_lesion_random_k_checked_before_the_per_block_lesion(tmp_path, data_root, capsys, monkeypatch):
    import resviz.cli

    folder = train(tiny(data_root, steps=10), tmp_path).folder

    def never(*a, **k):
        raise AssertionError("the per-block lesion ran before --random-k was checked")

    monkeypatch.setattr(resviz.cli, "lesion_single", never)  # what `resviz lesion` calls
    code = main(["lesion", "--checkpoint", str(folder), "--dataset", "digits", "--root", data_root,
                 "--random-k", "100", "--json"])
    assert code == 2 and "k=100 blocks cannot be removed" in capsys.readouterr().err


# ------------------------------------------------------------------------ damaged inputs, named
@pytest.mark.parametrize("content", ["[1, 2]", "{not json", ""])
def test_damaged_config_json_is_named(tmp_path, data_root, capsys, content):
    config = tiny(data_root, steps=10)
    folder = tmp_path / config.run_id
    folder.mkdir()
    (folder / "config.json").write_text(content)
    code = main(["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8",
                 "--steps", "10", "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10",
                 "--eval-every", "10", "--record-every", "5", "--eval-batch-size", "400", "--no-progress",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and str(folder / "config.json") in err and len(err.splitlines()) == 1


def test_out_that_is_a_file(tmp_path, data_root, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for command in (["sweep", "--depths", "8"], ["train", "--depth", "8"]):
        code = main([*command, "--dataset", "digits", "--root", data_root, "--steps", "10", "--no-progress",
                     "--out", str(afile)])
        err = capsys.readouterr().err
        assert code == 2 and "is an existing file, not a folder" in err and "Traceback" not in err


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_one_corrupt_table_skips_that_run_only(tmp_path, data_root):
    for seed in (0, 1):
        train(tiny(data_root, steps=10, seed=seed), tmp_path)
    bad = tmp_path / tiny(data_root, seed=1).run_id / "stats.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.warns(runs.RunSkipped, match=str(bad)):
        loaded = runs.load(tmp_path)
    assert loaded.status["run_id"].tolist() == [tiny(data_root, seed=0).run_id] and len(loaded.stats)
    (tmp_path / tiny(data_root, seed=1).run_id / "config.json").write_text('"a string"')
    with pytest.warns(runs.RunSkipped, match="config.json holds a str"):
        assert len(runs.load(tmp_path)) == 1


def test_status_json_hand_edited(tmp_path, data_root):
    folder = train(tiny(data_root, steps=10), tmp_path).folder
    (folder / "status.json").write_text("[]")
    assert runfolder.read_status(folder)["status"] == "failed" and "status.json" in runfolder.read_status(folder)["reason"]


def test_empty_image_file_is_named(tmp_path):
    from resviz.datasets import decode_images

    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.jpg is empty \(0 bytes\), not an image; remove it or replace"):
        decode_images([empty], progress=False)


def test_evaluate_accepts_a_runs_checkpoint_file(tmp_path, data_root, capsys):
    folder = train(tiny(data_root, steps=10), tmp_path).folder
    assert main(["evaluate", "--checkpoint", str(folder / "checkpoint.pt"), "--dataset", "digits",
                 "--root", data_root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 360


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_checkpoint_of_another_depth_is_named(tmp_path, data_root):
    a = train(tiny(data_root, steps=20), tmp_path / "a").folder
    b_config = tiny(data_root, depth=14, steps=20, checkpoint_every=10)
    with _SignalAt("forward", 3):
        with pytest.raises(Interrupted):
            train(b_config, tmp_path / "b")
    b = tmp_path / "b" / b_config.run_id
    (b / "checkpoint.pt").write_bytes((a / "checkpoint.pt").read_bytes())
    with pytest.raises(ValueError, match=r"holds another model \(arch='resnet', depth=8, .*depth=14"):
        train(b_config, tmp_path / "b")


# ------------------------------------------------------------------------ what a user reads
def test_sweep_summary_shows_each_reason_whole_once():
    reason = "cifar10 is not available offline: " + "x" * 80 + " put the file here: data/cifar-10-python.tar.gz"
    table = sweeps_common.summary_table([
        {"run": "a", "status": "failed", "step": -1, "train_error": float("nan"), "test_error": float("nan"),
         "seconds": float("nan"), "reason": reason},
        {"run": "b", "status": "failed", "step": -1, "train_error": float("nan"), "test_error": float("nan"),
         "seconds": float("nan"), "reason": reason},
        {"run": "c", "status": "done", "step": 10, "train_error": 0.1, "test_error": 0.2, "seconds": 3.0,
         "reason": ""}])
    text = sweeps.format_summary(table)
    assert text.count(reason) == 1 and "[1] a, b:" in text


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_log_file_gets_plain_lines_and_files_follow_the_umask(tmp_path, data_root):
    args = ["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8", "--steps", "20",
            "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10", "--eval-every", "20",
            "--out", str(tmp_path)]
    old = os.umask(0o027)
    try:
        done = cli(*args)
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if " step " in line]
    assert len(lines) == 2 and lines[0].split(": ", 1)[1].startswith("loss ")
    assert " test – " in lines[0] and " test – " not in lines[1]  # no evaluation before step 20
    for path in (tmp_path / TINY.run_id).iterdir():
        assert path.stat().st_mode & 0o777 == 0o640, path


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_signal_before_the_first_step_resumes_exactly(tmp_path, data_root, reference):
    """SIGINT inside the held-out Fig. 7 measurement at initialisation (the first eval-mode forward, before step
    0): the run is saved at step 0 and the resumed run measures the initial value once, not twice."""
    config = _config(data_root)
    with _SignalAt("eval", 1, signal.SIGINT) as hook, pytest.raises(Interrupted):
        train(config, tmp_path)
    assert hook.calls >= 1
    folder = tmp_path / config.run_id
    status = runfolder.read_status(folder)
    assert status["status"] == "interrupted" and status["step"] == 0
    assert train(config, tmp_path).status == "done"
    assert_same_run(reference, folder)
