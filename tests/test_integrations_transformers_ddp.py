"""resviz.integrations.transformers.RecorderCallback in a Hugging Face Trainer under `torchrun --nproc-per-node 2`
(CPU, gloo), against the same script in one process with the whole batch. Bounded by subprocess timeouts."""
from __future__ import annotations

import pytest

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from test_probes_distributed import ROOT, assert_rank0_wrote_the_one_process_table, one_process, torchrun  # noqa: E402

WORKER = str(ROOT / "tests" / "hf_ddp_worker.py")


@pytest.mark.slow
def test_trainer_under_torchrun_equals_one_process_and_only_rank_0_writes(tmp_path):
    (tmp_path / "ddp").mkdir(), (tmp_path / "one").mkdir()
    run = torchrun(WORKER, str(tmp_path / "ddp"), timeout=480)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = one_process(WORKER, str(tmp_path / "one"), timeout=480)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_rank0_wrote_the_one_process_table(tmp_path / "ddp", tmp_path / "one", steps=3)
