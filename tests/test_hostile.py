"""Hostile input (issue 22): whatever a run folder, a data root, a run id or a full disk holds, nothing read from
disk runs code, nothing is written outside --out, and each case ends in one line naming the problem and the fix.
docs/reliability.md lists the cases and the test of each.

The crafted pickles below carry a payload that creates a file when it is unpickled by a loader that runs code
(`open(MARKER, "w")`); `payload_is_live` checks that it really does, so each test that finds no marker file
proves the product did not run it."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from resviz import datasets, runs
from resviz.cli import main
from resviz.io import UnsafeFile, read_plain_pickle
from tiny_training import data_root  # noqa: F401 - a fixture

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
    runs.write_status(folder, "interrupted", "cut", step=10)  # so that train resumes from the checkpoint
    assert main(train_args(data_root, folder.parent)) == 2
    _one_line_naming(capsys, folder / "checkpoint.pt")
    assert not marker.exists()
    assert runs.read_status(folder)["status"] == "interrupted"  # nothing written over the run


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
    import numpy as np

    entry = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [0, 1], b"batch_label": b"x"}
    with open(tmp_path / "b", "wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    back = read_plain_pickle(tmp_path / "b", encoding="latin1")
    assert back[b"labels"] == [0, 1] and back[b"data"].tolist() == entry[b"data"].tolist()
