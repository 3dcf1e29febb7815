"""resviz.integrations.lightning.RecorderCallback under Lightning's DDP strategy: 2 CPU processes (gloo) that
Lightning launches itself, against the same script on one process with the whole batch. Bounded by a
subprocess timeout."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

pytest.importorskip("lightning")

from resviz import runs  # noqa: E402
from test_probes_distributed import ROOT, assert_same_rows, environment  # noqa: E402

WORKER = str(ROOT / "tests" / "lightning_ddp_worker.py")


def fit(out, devices: int) -> None:
    out.mkdir()
    done = subprocess.run([sys.executable, WORKER, str(out), str(devices)], capture_output=True, text=True,
                          timeout=480, env=environment())
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_ddp_run_folder_equals_one_process_and_only_rank_0_writes_it(tmp_path):
    fit(tmp_path / "ddp", 2)
    fit(tmp_path / "one", 1)
    folders = list((tmp_path / "ddp" / "runs").iterdir())
    assert len(folders) == 1  # one run_id on both ranks (rank 0's, broadcast), one writer
    pid0, writer0 = (tmp_path / "ddp" / "pid-rank0").read_text().split()
    pid1, writer1 = (tmp_path / "ddp" / "pid-rank1").read_text().split()
    assert (writer0, writer1) == ("True", "False") and folders[0].name.endswith(f"-{pid0}")
    assert runs.read_status(folders[0])["status"] == "done"
    got = pd.read_parquet(folders[0] / "stats.parquet")
    (one,) = list((tmp_path / "one" / "runs").iterdir())
    want = pd.read_parquet(one / "stats.parquet")
    assert sorted(got["step"].unique()) == [0, 1, 2]
    assert_same_rows(got, want, rtol=1e-5)
