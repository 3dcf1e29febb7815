"""resviz.integrations.lightning.RecorderCallback under Lightning's DDP strategy: 2 CPU processes (gloo) that
Lightning launches itself, against the same script on one process with the whole batch. Bounded by a
subprocess timeout."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("lightning")

from test_probes_distributed import ROOT, assert_rank0_wrote_the_one_process_table, environment  # noqa: E402

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
    assert_rank0_wrote_the_one_process_table(tmp_path / "ddp", tmp_path / "one", steps=3)
