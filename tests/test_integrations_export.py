"""resviz.integrations: the docs' examples run as written; TensorBoard and W&B output read back; live sinks;
the export commands; and `import resviz` imports none of the optional libraries."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightning")
pytest.importorskip("transformers")
pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from resviz import cli, runs  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
OPTIONAL = ("lightning", "pytorch_lightning", "transformers", "accelerate", "tensorboard", "wandb", "timm")


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def accumulator(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):
    """Every python block of docs/integrations.md, in order, in one fresh folder (as a reader pastes them)."""
    folder = tmp_path_factory.mktemp("docs")
    old = os.getcwd()
    os.chdir(folder)
    try:
        namespace: dict = {}
        for block in doc_blocks():
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the docs' own examples
    finally:
        os.environ.pop("WANDB_MODE", None)
        os.chdir(old)
    return folder


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_import_resviz_imports_no_optional_library():
    code = ("import sys, resviz, resviz.integrations, resviz.cli; "
            f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_docs_examples_run_and_write_run_folders(docs_run):
    assert len(doc_blocks()) == 4
    rs = runs.load(docs_run / "runs")
    assert sorted(rs.status["run_id"]) == ["hf-gpt2", "lightning-digits"]
    assert set(rs.status["status"]) == {"done"}
    lit = rs.stats[rs.stats["run_id"] == "lightning-digits"]
    assert sorted(lit["step"].unique()) == [0, 4, 8, 12]
    hf = rs.stats[rs.stats["run_id"] == "hf-gpt2"]
    assert sorted(hf["step"].unique()) == [0, 2, 4, 6]
    # GPT-2's blocks are known: the default metrics, per residual addition and per LayerNorm (issue 24)
    assert {"grad_norm", "response_std", "branch_std", "skip_std", "sum_std", "branch_ratio"} <= set(
        hf["metric"].astype(str))
    assert "transformer.h.0.attn.probe_branch" in set(hf["layer"].astype(str))
    assert rs.metrics[rs.metrics["run_id"] == "hf-gpt2"]["loss"].notna().any()


def test_tensorboard_export_reads_back(docs_run):
    _, stats, _ = runs.load_run(docs_run / "runs" / "lightning-digits")
    acc = accumulator(docs_run / "tb" / "lightning-digits")
    tags = set(acc.Tags()["scalars"])
    row = stats[(stats["metric"] == "response_std") & (stats["layer"] == "layer2.0.bn1")].sort_values("step")
    events = acc.Scalars("response_std/layer2.0.bn1")
    assert [e.step for e in events] == row["step"].tolist()
    np.testing.assert_allclose([e.value for e in events], row["value"], rtol=1e-6)  # TensorBoard keeps float32
    depth = acc.Scalars("depth/response_std/step12")
    last = stats[(stats["metric"] == "response_std") & (stats["step"] == 12)].sort_values("layer_index")
    assert [e.step for e in depth] == last["layer_index"].tolist()
    np.testing.assert_allclose([e.value for e in depth], last["value"], rtol=1e-6)
    assert {"train/loss", "depth/channel_var.probe_out/step0", "depth/channel_var.probe_branch/step0"} <= tags
    assert acc.Tags()["tensors"]  # the custom-scalars layout is a tensor summary


def test_wandb_offline_export_writes_its_files(docs_run):
    offline = sorted((docs_run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("*.wandb"))
    tables = offline[0] / "files" / "media" / "table"
    assert list((tables / "depth").glob("response_std_table_*.table.json"))  # the line_series' data
    assert list((tables / "depth_table").glob("response_std_*.table.json"))


def test_live_sinks_from_lightning(tmp_path):
    import lightning as L
    import torch
    import wandb
    from torch import nn

    import resviz
    from resviz.integrations.lightning import RecorderCallback
    from resviz.integrations.tensorboard import TensorBoardSink
    from resviz.integrations.wandb import WandbSink

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = resviz.cifar_resnet(8, width=4)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    run = wandb.init(project="resviz-test", mode="offline", dir=str(tmp_path), reinit="create_new")
    try:
        cb = RecorderCallback(every=2, out=tmp_path / "runs", run_id="live",
                              sinks=[TensorBoardSink(tmp_path / "tb"), WandbSink(run)])
        L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, callbacks=[cb]).fit(Module(), loader)
    finally:
        run.finish()
    tags = set(accumulator(tmp_path / "tb").Tags()["scalars"])
    assert {"grad_norm/linear.weight", "train/loss", "depth/response_std/step2", "depth/response_std/step4"} <= tags
    assert list(Path(run.dir).parent.glob("*.wandb"))


def test_export_commands(docs_run, tmp_path, capsys):
    assert cli.main(["export-tb", str(docs_run / "runs"), "--logdir", str(tmp_path / "tb"), "--depth-steps", "2"]) == 0
    assert set(p.name for p in (tmp_path / "tb").iterdir()) == {"hf-gpt2", "lightning-digits"}
    tags = accumulator(tmp_path / "tb" / "lightning-digits").Tags()["scalars"]
    assert sorted(t for t in tags if t.startswith("depth/response_std/")) == [
        "depth/response_std/step0", "depth/response_std/step12"]
    assert f"view with: tensorboard --logdir {tmp_path / 'tb'}" in capsys.readouterr().out
    assert cli.main(["export-wandb", str(docs_run / "runs" / "hf-gpt2"), "--mode", "offline",
                     "--dir", str(tmp_path)]) == 0
    assert list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    assert cli.main(["export-tb", str(tmp_path / "tb")]) == 2  # a folder without run folders: one line, exit 2
    assert "resviz: error: no run folders in" in capsys.readouterr().err


def test_docs_runs_open_in_explore(docs_run):
    from resviz.widgets import explore

    assert explore(docs_run / "runs") is not None
