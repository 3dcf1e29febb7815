"""Hostile input (issue 22): whatever a run folder, a data root, a run id or a full disk holds, nothing read from
disk runs code, nothing is written outside --out, and each case ends in one line naming the problem and the fix.
docs/reliability.md lists the cases and the test of each.

The crafted pickles below carry a payload that creates a file when it is unpickled by a loader that runs code
(`open(MARKER, "w")`); `payload_is_live` checks that it really does, so each test that finds no marker file
proves the product did not run it."""
from __future__ import annotations

import json
import os
import pickle
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from resviz import datasets, runfolder, runs
from resviz.cli import main
from resviz.io import UnsafeFile, read_plain_pickle
from helpers import image_tree

RUN = "r"


class Payload:
    """Unpickled by a loader that runs code, it creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def train_args(data_root, out, *extra: str, run_id: str = RUN) -> list[str]:
    return ["train", "--dataset", "digits", "--root", data_root, "--depth", "8", "--width", "8", "--steps", "20",
            "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10", "--eval-every", "10",
            "--record-every", "5", "--no-progress", "--out", str(out), "--run-id", run_id, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    """A finished tiny run's folder (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("trained")
    assert main(train_args(data_root, out)) == 0
    return out / RUN


def crafted_copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run whose checkpoint.pt is the real one plus a payload in its config; (folder, marker)."""
    folder = tmp_path / "out" / RUN
    shutil.copytree(trained, folder)
    marker = tmp_path / "PWNED"
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    ckpt["config"]["note"] = Payload(marker)
    torch.save(ckpt, folder / "checkpoint.pt")
    return folder, marker


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_payload_is_live(trained, tmp_path):
    """The control: a loader that runs code does create the marker from the crafted checkpoint."""
    folder, marker = crafted_copy(trained, tmp_path)
    torch.load(folder / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def _one_line_naming(capsys, path: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and "io.open" in err and "delete the file" in err, err
    return err


def test_resume_refuses_a_crafted_checkpoint(trained, tmp_path, data_root, capsys):
    folder, marker = crafted_copy(trained, tmp_path)
    runfolder.write_status(folder, "interrupted", "cut", step=10)  # so that train resumes from the checkpoint
    assert main(train_args(data_root, folder.parent)) == 2
    _one_line_naming(capsys, folder / "checkpoint.pt")
    assert not marker.exists()
    assert runfolder.read_status(folder)["status"] == "interrupted"  # nothing written over the run


@pytest.mark.parametrize("target", ["folder", "checkpoint.pt"])
def test_evaluate_refuses_a_crafted_checkpoint(trained, tmp_path, data_root, capsys, target):
    folder, marker = crafted_copy(trained, tmp_path)
    given = folder if target == "folder" else folder / "checkpoint.pt"
    assert main(["evaluate", "--checkpoint", str(given), "--dataset", "digits", "--root", data_root,
                 "--device", "cpu"]) == 2
    _one_line_naming(capsys, folder / "checkpoint.pt")
    assert not marker.exists()


def test_lesion_refuses_a_crafted_checkpoint(trained, tmp_path, data_root, capsys):
    folder, marker = crafted_copy(trained, tmp_path)
    assert main(["lesion", "--checkpoint", str(folder), "--dataset", "digits", "--root", data_root,
                 "--device", "cpu", "--json"]) == 2
    _one_line_naming(capsys, folder / "checkpoint.pt")
    assert not marker.exists()


def test_evaluate_refuses_a_crafted_th_file(tmp_path, data_root, capsys):
    marker, path = tmp_path / "PWNED", tmp_path / "resnet8.th"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(marker)}, path)
    assert main(["evaluate", "--checkpoint", str(path), "--dataset", "digits", "--root", data_root,
                 "--device", "cpu"]) == 2
    _one_line_naming(capsys, path)
    assert not marker.exists()


def test_a_crafted_dataset_cache_is_rebuilt_without_running_it(tmp_path, data_root):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    marker = tmp_path / "PWNED"
    torch.save({"header": Payload(marker)}, root / "resviz-digits.pt")
    with pytest.warns(UserWarning, match=r"resviz-digits.pt is unreadable .*rebuilding it"):
        data = datasets.load("digits", root=root, progress=False)
    assert len(data.train_labels) and not marker.exists()


def test_crafted_cifar_batches_are_refused(tmp_path):
    folder, marker = tmp_path / "data" / datasets.CIFAR10_FOLDER, tmp_path / "PWNED"
    folder.mkdir(parents=True)
    for name in (*datasets.CIFAR10_TRAIN, *datasets.CIFAR10_TEST, "batches.meta"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"label_names": [b"a"], b"data": Payload(marker)}, f, protocol=2)
    with pytest.raises(UnsafeFile, match=r"batches.meta needs io.open to load, which would run code"):
        datasets.load("cifar10", root=tmp_path / "data", progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_pickles_still_load(tmp_path, protocol):
    """What the CIFAR-10 batches hold (byte-string keys, uint8 arrays, lists) loads under every protocol."""

    entry = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [0, 1], b"batch_label": b"x"}
    with open(tmp_path / "b", "wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    back = read_plain_pickle(tmp_path / "b", encoding="latin1")
    assert back[b"labels"] == [0, 1] and back[b"data"].tolist() == entry[b"data"].tolist()


# ------------------------------------------------------------------------ run ids are names, not paths
@pytest.mark.parametrize("run_id, says", [
    ("x/foo", "holds the separator '/'"), ("ABS", "holds the separator '/'"), ("../x", "holds the separator '/'"),
    (".", "names a folder itself"), ("..", "names a folder itself"), ("a\\b", "holds the separator"),
    ("a\nb", r"holds the unprintable character '\\n'"), ("", "is empty"), (" ", "is empty"),
    ("y" * 300, r"\(300 chars\) is 300 bytes long; the file system of .* takes at most \d+"),
])
def test_a_run_id_that_is_not_a_name_is_refused_before_anything_is_written(tmp_path, data_root, capsys, run_id,
                                                                            says):

    run_id = str(tmp_path / "abs") if run_id == "ABS" else run_id
    out = tmp_path / "out"
    assert main(train_args(data_root, out, run_id=run_id)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(f"--run-id .*{says}", err), err
    assert list(tmp_path.iterdir()) == []  # no --out, no folder beside it, no .lock anywhere


def test_the_lock_and_the_folder_are_one_path(tmp_path, data_root):
    """A run holds `out/<id>/.lock` while it writes `out/<id>/`: a second writer of the same id is refused."""
    from helpers import tiny

    from resviz.errors import RunBusy
    from resviz.train import train

    folder = tmp_path / RUN
    folder.mkdir()
    with runfolder.run_lock(folder), pytest.raises(RunBusy, match=f"run folder {folder} is in use"):
        train(tiny(data_root), tmp_path, run_id=RUN)


def test_a_folder_where_the_lock_goes_is_one_line(tmp_path, data_root, capsys):
    (tmp_path / RUN / ".lock").mkdir(parents=True)
    assert main(train_args(data_root, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"resviz: error: {tmp_path / RUN / '.lock'} cannot be the run's lock file (Is a directory); " \
                  "delete it and run again"


def test_a_long_image_folder_name_gives_a_usable_run_id(tmp_path):
    from resviz.io import safe_name
    from resviz.train import TrainConfig

    long = "a" * 250
    config = TrainConfig(dataset=f"imagefolder:{tmp_path / long}")
    assert len(config.run_id.encode()) < 160 and runfolder.check_run_id(config.run_id, tmp_path)
    assert safe_name(long) != safe_name(long[:-1] + "b")  # cut names stay apart
    assert safe_name("cats-vs-dogs") == "cats-vs-dogs" and safe_name("a\nb").startswith("a_b-")


def test_an_integration_run_folder_takes_names_only(tmp_path):
    from resviz.runfolder import RunFolder

    with pytest.raises(ValueError, match=r"run_id '\.\./x' holds the separator '/'"):
        RunFolder(tmp_path, "../x", {})


# ------------------------------------------------------------------------ OSErrors a user causes
def test_a_too_long_out_component_is_one_line(tmp_path, data_root, capsys):
    out = tmp_path / ("z" * 300)
    assert main(train_args(data_root, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "File name too long" in err and "use shorter names" in err, err


def _run_cli(args, env=None, **kw):

    return subprocess.run([sys.executable, "-m", "resviz.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False, env=env or {**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.mark.slow
def test_a_file_size_limit_fails_the_run_in_one_line_and_the_rerun_continues(tmp_path, data_root):
    """ulimit -f below the checkpoint's size (EFBIG, as a full quota): one line naming checkpoint.pt, status
    failed, config.json kept; without the limit the same command trains the run to the end."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the checkpoint is ~180 kB

    datasets.load("digits", root=data_root, progress=False)  # the data cache (5 MB) written before the limit
    cut = _run_cli(train_args(data_root, tmp_path), preexec_fn=limit)
    assert cut.returncode == 2, cut.stderr
    assert cut.stderr.count("\n") == 1 and "Traceback" not in cut.stderr
    assert f"{tmp_path / RUN / 'checkpoint.pt'}: File too large; " in cut.stderr and "ulimit -f" in cut.stderr
    status = runfolder.read_status(tmp_path / RUN)
    assert status["status"] == "failed" and status["step"] == 0 and (tmp_path / RUN / "config.json").is_file()
    assert not [p for p in (tmp_path / RUN).iterdir() if p.name.endswith(".tmp")]  # no temporary left
    again = _run_cli(train_args(data_root, tmp_path))
    assert again.returncode == 0, again.stderr
    assert runfolder.read_status(tmp_path / RUN)["status"] == "done"


FULL_DISK = """
mount -t tmpfs -o size=300k tmpfs {mnt} || exit 99
{cli} {train} > /dev/null 2> {tmp}/err1; echo $? > {tmp}/rc1
cp -a {mnt}/r {tmp}/after_full
{cli} report {mnt}/r --out {mnt}/report --formats html > /dev/null 2> {tmp}/err_report; echo $? > {tmp}/rc_report
rm -rf {mnt}/report
mount -o remount,size=8m {mnt}
{cli} {train} > /dev/null 2> {tmp}/err2; echo $? > {tmp}/rc2
cp -a {mnt}/r {tmp}/after_rerun
mount -o remount,ro {mnt}
{cli} {train} --run-id r2 > /dev/null 2> {tmp}/err_ro; echo $? > {tmp}/rc_ro
"""


@pytest.mark.slow
def test_a_full_disk_fails_the_run_in_one_line_and_the_rerun_continues(tmp_path, data_root):
    """A 300 kB tmpfs (in a user and mount namespace) fills at the second checkpoint: one line naming
    checkpoint.pt, status failed at the first checkpoint's step, its files whole; `report` onto the full disk:
    one line; with room again the same command finishes the run; onto a read-only mount: one line."""

    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) to mount a small tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli = f"{shlex.quote(sys.executable)} -m resviz.cli"
    train = " ".join(shlex.quote(a) for a in train_args(data_root, mnt))
    script = FULL_DISK.format(mnt=mnt, cli=cli, train=train, tmp=tmp_path)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode == 99 or not (tmp_path / "rc1").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here ({done.stderr.strip()[:200]})")
    read = lambda name: (tmp_path / name).read_text()
    assert read("rc1").strip() == "2", read("err1")
    assert read("err1").count("\n") == 1 and f"{mnt}/r/checkpoint.pt: No space left on device" in read("err1")
    status = runfolder.read_status(tmp_path / "after_full")
    assert status["status"] == "failed" and status["step"] == 10 and "free some space" in status["reason"]
    assert torch.load(tmp_path / "after_full" / "checkpoint.pt", weights_only=True)["step"] == 10
    assert read("rc_report").strip() == "2" and read("err_report").count("\n") == 1, read("err_report")
    assert "No space left on device; the disk is full" in read("err_report")
    assert read("rc2").strip() == "0", read("err2")
    assert runfolder.read_status(tmp_path / "after_rerun")["status"] == "done"
    assert read("rc_ro").strip() == "2" and read("err_ro").count("\n") == 1, read("err_ro")
    assert f"{mnt}/r2 (Read-only file system); the file system is read-only: choose a writable --out" in read("err_ro")


# ------------------------------------------------------------------------ silent wrong results
def _tree_args(tmp_path, tree, *extra):
    return ["train", "--dataset", f"imagefolder:{tree}", "--root", str(tmp_path / "data"), "--depth", "8", "--width",
            "4", "--steps", "4", "--batch-size", "4", "--log-every", "2", "--checkpoint-every", "2", "--eval-every",
            "2", "--record-every", "2", "--no-progress", "--out", str(tmp_path / "runs"), "--run-id", RUN, *extra]


def test_resume_on_changed_images_is_refused(tmp_path, capsys):
    tree = image_tree(tmp_path / "tree")
    assert main(_tree_args(tmp_path, tree)) == 0
    runfolder.write_status(tmp_path / "runs" / RUN, "interrupted", "cut", step=2)  # as if cut at step 2
    image_tree(tree, seed=1)  # the same names, other pictures
    capsys.readouterr()
    assert main(_tree_args(tmp_path, tree)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained on other data than imagefolder:" in err, err
    assert "12 training images then, 12 now, contents differ" in err


def test_a_run_with_a_relative_image_folder_resumes_under_its_absolute_spelling(tmp_path, monkeypatch, capsys):
    """The CLI makes --dataset imagefolder:PATH absolute (a Ray worker resolves a relative path where `ray start`
    ran); a run whose config.json spells it relative, as before, still resumes when it names the same folder
    from here, and takes the absolute spelling; another folder is refused as before."""
    from resviz.train import TrainConfig
    from resviz.train.folder import prepare_folder

    monkeypatch.chdir(tmp_path)
    tree = image_tree(tmp_path / "tree")
    relative = _tree_args(tmp_path, "tree")  # as a user types it, from tmp_path
    old = TrainConfig(dataset="imagefolder:tree", root=str(tmp_path / "data"), depth=8, width=4, steps=4,
                      batch_size=4, log_every=2, checkpoint_every=2, eval_every=2, record_every=2, progress=False)
    prepare_folder(old, tmp_path / "runs", RUN)  # what the CLI wrote before: the relative spelling, not started yet
    assert runfolder.read_config(tmp_path / "runs" / RUN)["dataset"] == "imagefolder:tree"
    assert main(relative) == 0, capsys.readouterr().err
    assert runfolder.read_status(tmp_path / "runs" / RUN)["status"] == "done"
    assert runfolder.read_config(tmp_path / "runs" / RUN)["dataset"] == f"imagefolder:{tree}"

    other = image_tree(tmp_path / "elsewhere" / "tree")
    capsys.readouterr()
    assert main(_tree_args(tmp_path, other)) == 2  # a folder of the same name elsewhere: another run
    err = capsys.readouterr().err.strip()
    assert err == (f"resviz: error: {tmp_path / 'runs' / RUN} holds run {RUN!r} with a different config (dataset: "
                   f"'imagefolder:{tree}' -> 'imagefolder:{other}'); use another --out or --run-id, or the same "
                   "config to resume")
    prepare_folder(old, tmp_path / "runs", "r2")  # spelled relative again, then resumed from another directory,
    monkeypatch.chdir(tmp_path / "elsewhere")  # where "tree" is the other folder
    with pytest.raises(ValueError, match=rf"different config \(dataset: 'imagefolder:tree' -> 'imagefolder:{tree}'\)"):
        prepare_folder(TrainConfig.from_dict({**old.to_dict(), "dataset": f"imagefolder:{tree}"}), tmp_path / "runs",
                       "r2")


def test_a_one_class_image_folder_is_refused(tmp_path, capsys):
    tree = image_tree(tmp_path / "tree", classes=("cat",))
    assert main(_tree_args(tmp_path, tree)) == 2
    err = capsys.readouterr().err.strip()
    assert "holds 1 class (cat); a classifier needs at least 2" in err, err


def test_evaluate_refuses_a_data_set_of_other_classes(trained, tmp_path, capsys):
    tree = image_tree(tmp_path / "tree")
    assert main(["evaluate", "--checkpoint", str(trained), "--dataset", f"imagefolder:{tree}", "--root",
                 str(tmp_path / "data"), "--device", "cpu", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained on the classes 0, 1, 2, 3, 4, ... (10) but the data set has " \
        "cat, dog; evaluate it on the data set it was trained on" in err, err


def test_another_class_count_is_named_on_resume(trained, tmp_path, capsys):
    """The checkpoint of a 10-class run in the folder of a 2-class one: the two descriptions differ in classes."""
    tree = image_tree(tmp_path / "tree")
    assert main(_tree_args(tmp_path, tree)) == 0
    folder = tmp_path / "runs" / RUN
    runfolder.write_status(folder, "interrupted", "cut", step=2)
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    ckpt["config"]["width"] = 4
    torch.save(ckpt, folder / "checkpoint.pt")
    capsys.readouterr()
    assert main(_tree_args(tmp_path, tree)) == 2
    err = capsys.readouterr().err
    assert "holds another model (arch='resnet', depth=8, width=4, norm='batch', shortcut='A', classes=10) than " \
           "this run (arch='resnet', depth=8, width=4, norm='batch', shortcut='A', classes=2)" in err, err


def test_recorder_steps_must_increase():
    from resviz import Recorder, cifar_resnet

    model = cifar_resnet(8, width=4)
    with Recorder(model, every=1) as rec:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        rec.end_step(5)
        with pytest.raises(ValueError, match=r"end_step\(step=3\) after step 5: steps must increase"):
            rec.end_step(3)
        with pytest.raises(ValueError, match=r"end_step\(step=5\) after step 5"):
            rec.end_step(5)
    assert sorted(rec.frame()["step"].unique()) == [5]


def test_register_block_points_must_exist():
    from torch import nn

    import resviz
    from resviz.probes import unregister_block

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    resviz.register_block(Block, branch="bn", skip="zzz")
    try:
        with pytest.raises(ValueError, match=r"block '0' \(registered Block\) has none of the skip points 'zzz' "
                                             r"\(its submodules: conv, bn\)"):
            resviz.Recorder(nn.Sequential(Block(), Block()))
    finally:
        unregister_block(Block)


def test_a_finished_run_without_its_metrics_is_named(trained, tmp_path):
    folder = tmp_path / RUN
    shutil.copytree(trained, folder)
    (folder / "metrics.parquet").unlink()
    with pytest.warns(runs.RunIncomplete, match=r"is done but has no metrics.parquet \(deleted\?\)"):
        loaded = runs.load(folder)
    assert loaded.status["status"].tolist() == ["done"]


def test_symlinked_and_bracketed_run_folders_are_found(trained, tmp_path):
    real = tmp_path / "elsewhere" / "r[1]"
    shutil.copytree(trained, real)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "linked").symlink_to(real)
    assert runs.find_runs(tmp_path / "out") == [tmp_path / "out" / "linked"]  # train writes through the link
    assert runs.find_runs(real) == [real] and runs.find_runs(str(tmp_path / "elsewhere")) == [real]
    assert runs.find_runs(tmp_path) == [tmp_path / "elsewhere" / "r[1]"]  # the real folder once, not twice


def test_a_never_started_run_reads_interrupted(trained, tmp_path):
    folder = tmp_path / RUN
    shutil.copytree(trained, folder)
    (folder / "status.json").unlink()
    (folder / ".lock").write_text("999999999\n")  # a holder that is gone
    assert runfolder.read_status(folder)["status"] == "interrupted"
    with runfolder.run_lock(folder):  # a live holder: it is starting
        assert runfolder.read_status(folder)["status"] == "running"


# ------------------------------------------------------------------------ messages name what the user typed
@pytest.mark.parametrize("args, says", [
    (["train", "--seed", "99999999999999999999"], "--seed=99999999999999999999 must be an integer from 0 to"),
    (["sweep", "--depths", "abc"], "--depths='abc' must be an integer"),
    (["sweep", "--seeds", "1,x"], "--seeds='x' must be an integer"),
    (["invariance", "--seed", "-1"], "--seed -1 must be an integer from 0 to"),
    (["export-tb", "RUNS", "--depth-steps", "-3"], "--depth-steps -3 must be a positive number"),
    (["export-wandb", "RUNS", "--depth-steps", "-3"], "--depth-steps -3 must be a positive number"),
])
def test_a_bad_value_is_named_as_typed_before_anything_is_written(tmp_path, capsys, args, says):
    args = [str(tmp_path) if a == "RUNS" else a for a in args]
    out = ["--out", str(tmp_path / "out")] if args[0] in ("train", "sweep") else []
    assert main([*args, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "out").exists()


def test_export_tb_skips_a_damaged_run_as_report_does(trained, tmp_path, capsys):
    shutil.copytree(trained, tmp_path / "runs" / "good")
    shutil.copytree(trained, tmp_path / "runs" / "bad")
    (tmp_path / "runs" / "bad" / "stats.parquet").write_bytes(b"not parquet")
    assert main(["export-tb", str(tmp_path / "runs"), "--logdir", str(tmp_path / "tb")]) == 0
    captured = capsys.readouterr()
    assert "skipping run" in captured.err and "bad/stats.parquet cannot be read" in captured.err
    assert (tmp_path / "tb" / RUN).is_dir()  # the good one (its config names it r)


def test_export_tb_keeps_a_crafted_run_id_inside_the_logdir(trained, tmp_path, capsys):

    folder = tmp_path / "runs" / RUN
    shutil.copytree(trained, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "run_id": "../../escaped"}))
    assert main(["export-tb", str(folder), "--logdir", str(tmp_path / "tb" / "logs")]) == 2
    assert "run_id in" in capsys.readouterr().err and not (tmp_path / "escaped").exists()


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_export_wandb_without_a_login_is_one_line(trained, tmp_path):
    pytest.importorskip("wandb")

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = _run_cli(["export-wandb", str(trained), "--mode", "online", "--dir", str(tmp_path)],
                    env={**env, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("resviz: error: W&B: No API key configured")
    assert "wandb login" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------------ sizes bounded before building
def test_a_net_beyond_memory_is_refused_before_building(tmp_path, data_root, capsys):
    """ResNet-60002 at width 16 holds hundreds of GiB for backward: refused in one line before the model is built
    (it used to build for minutes and train for 15 before it could be stopped)."""
    out = tmp_path / "out"
    assert main(train_args(data_root, out, "--depth", "60002", "--width", "16", "--batch-size", "128")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depth=60002, width=16 at batch_size=128 needs at least" in err, err
    assert "GiB free; use a smaller --depth, --width or --batch-size" in err and not out.exists()


# ------------------------------------------------------------------------ Ray under a scheduler
def test_sigterm_in_a_ray_driver_is_ctrl_c_with_its_own_status():
    """What the driver (and the confined child) install after ray.init: SIGTERM raises Interrupted(15), so the
    tasks are cancelled as on Ctrl-C and the command exits 143; the handlers before are restored after."""
    from resviz.errors import Interrupted
    from resviz.sweeps.ray_engine import signals_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, signals_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next instruction
            pass
    assert caught.value.signum == signal.SIGTERM and "SIGTERM" in str(caught.value)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_cancelled_run_left_running_reads_interrupted(trained, tmp_path):
    from resviz.sweeps.ray_engine import mark_interrupted

    folder = tmp_path / RUN
    shutil.copytree(trained, folder)
    runfolder.write_status(folder, "running", step=10, pid=os.getpid())  # a live pid: read_status says running
    with runfolder.run_lock(folder):  # a worker still holds it: left to mark itself
        mark_interrupted(folder, "cancelled with the sweep")
    assert runfolder.read_status(folder)["status"] == "running"
    mark_interrupted(folder, "cancelled with the sweep")  # nobody holds it: marked here
    status = runfolder.read_status(folder)
    assert status["status"] == "interrupted" and status["step"] == 10 and status["reason"] == "cancelled with the sweep"


def _wait_for_a_checkpoint(folder: Path, proc: subprocess.Popen) -> dict:
    """Poll the run's status (as `explore` does) until it is running past its first checkpoint."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.returncode == 99:
                pytest.skip(f"no user and UTS namespace here: {proc.stderr.read().strip()}")
            raise AssertionError(f"the run ended ({proc.returncode}) before it was stopped: {proc.stderr.read()}")
        status = runfolder.read_status(folder) if (folder / "status.json").is_file() else {}
        if status.get("status") == "running" and status.get("step", 0) >= 10:
            return status
        time.sleep(0.02)
    raise AssertionError("the run did not reach its first checkpoint within 5 minutes")


@pytest.mark.slow  # one run started in a process of its own, stopped, killed, then resumed: ~15 s on 2 cores
def test_a_run_killed_on_another_host_reads_interrupted_and_resumes(tmp_path, data_root):
    """A joined cluster's worker on another node, left `running` when the driver was killed: its pid cannot be
    checked from here, its lock can (flock reaches across a shared file system's hosts). `resviz train` runs in
    a process with a host name of its own (a UTS namespace): to resviz, a process of another machine."""
    from helpers import cli_on_host

    datasets.load("digits", root=data_root, progress=False)  # the data cache, written before the run starts
    args = train_args(data_root, tmp_path, "--steps", "100")
    folder = tmp_path / RUN
    trainer = cli_on_host("node-b", *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_a_checkpoint(folder, trainer)
        trainer.send_signal(signal.SIGSTOP)  # frozen mid-run: alive, holding its lock
        live = runfolder.read_status(folder)
        assert live["status"] == "running" and live["host"] == "node-b" != socket.gethostname()
        assert live["pid"] == trainer.pid
        trainer.kill()  # kill -9, as Ray ends a killed driver's workers
        trainer.wait(timeout=60)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(timeout=60)
    gone = runfolder.read_status(folder)
    assert gone["status"] == "interrupted" and gone["step"] == live["step"]
    assert gone["reason"] == (f"the process that ran it (pid {trainer.pid} on node-b) holds no lock on it any more; "
                              "run the command again to resume")
    assert runs.load(tmp_path).status["status"].tolist() == ["interrupted"]
    assert main(args) == 0  # the same command, here: resumed from the checkpoint, to the end
    assert runfolder.read_status(folder)["status"] == "done" and runfolder.read_status(folder)["step"] == 100


def test_a_file_system_without_flock_is_refused_in_one_line(tmp_path, data_root):
    """Lustre without -o flock answers flock(2) with ENOSYS: re-created by a seccomp filter in the CLI's process.
    One line naming the lock file and the fix, exit 2, nothing trained."""
    from helpers import cli_without_flock

    datasets.load("digits", root=data_root, progress=False)
    done = cli_without_flock(*train_args(data_root, tmp_path))
    if done.returncode == 99:
        pytest.skip(f"cannot make flock fail here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"resviz: error: cannot lock {tmp_path / RUN / '.lock'} (Function not implemented): its file system does not "
        "support flock, which keeps two writers off one run; mount Lustre with -o flock, NFS with locking (not -o "
        "nolock), or choose an --out on a local disk"]
    assert sorted(p.name for p in (tmp_path / RUN).iterdir()) == [".lock"]  # no config, status or checkpoint


def test_address_auto_naming_a_dead_cluster_is_one_line_in_seconds(tmp_path, data_root, monkeypatch):
    """Ray's search for `auto` can name a cluster that does not answer (a dead one, or a private sweep's in its
    own network namespace) and retry it forever: refused in one line before ray.init."""
    pytest.importorskip("ray")
    from helpers import tiny

    from resviz.errors import UserError
    from resviz.sweeps import run_grid_on_ray

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # what Ray's search for auto reads first
    with pytest.raises(UserError, match=r"^no Ray cluster answers at --address auto \([\d.]+:1\) \(Connection "
                                        r"refused\); start one with `ray start --head"):
        run_grid_on_ray([tiny(data_root)], tmp_path, address="auto")
