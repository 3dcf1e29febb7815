"""resviz.integrations.lightning: the RecorderCallback inside a real lightning.pytorch.Trainer, on the CPU."""
from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

import resviz  # noqa: E402
from helpers import all_hooks_empty
from resviz import io, runfolder, runs  # noqa: E402
from resviz.integrations.lightning import RecorderCallback  # noqa: E402

STEPS, BATCH = 6, 8


class Module(L.LightningModule):
    def __init__(self, net: nn.Module, fail_at: int = -1, error=RuntimeError):
        super().__init__()
        self.net, self.fail_at, self.error = net, fail_at, error

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise self.error("boom in training_step")
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def data(n: int = STEPS * BATCH * 2):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def trainer(callback, **kw):
    kw = {"max_steps": STEPS, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, "accelerator": "cpu", "devices": 1, **kw}
    return L.Trainer(callbacks=[callback], **kw)


def hand_loop(net: nn.Module, every: int, accumulate: int = 1) -> pd.DataFrame:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    batches = iter(data())
    with resviz.Recorder(net, every=every) as rec:
        for step in range(STEPS):
            for _ in range(accumulate):
                x, y = next(batches)
                (nn.functional.cross_entropy(net(x), y) / accumulate).backward()
            rec.end_step(step)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return rec.frame()


def assert_same_stats(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-5) -> None:
    key = ["step", "metric", "layer"]
    a = a.astype({"metric": str, "layer": str}).sort_values(key).reset_index(drop=True)
    b = b.astype({"metric": str, "layer": str}).sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_table_equals_hand_loop_with_validation_kept_out(tmp_path, accumulate):
    torch.manual_seed(0)
    net = resviz.cifar_resnet(8, width=4)
    expected = hand_loop(net, every=2, accumulate=accumulate)

    L.seed_everything(0)
    net = resviz.cifar_resnet(8, width=4)
    cb = RecorderCallback(every=2, out=tmp_path, run_id="lit")
    trainer(cb, accumulate_grad_batches=accumulate, val_check_interval=2 * accumulate,
            limit_val_batches=2).fit(Module(net), data(), data())

    rs = runs.load(tmp_path / "lit")
    assert rs.status.loc[0, "status"] == "done" and rs.status.loc[0, "step"] == STEPS
    assert rs.status.loc[0, "arch"] == "resnet" and rs.status.loc[0, "depth"] == 8 and rs.status.loc[0, "seed"] == 0
    assert sorted(rs.stats["step"].unique()) == [0, 2, 4]  # global_step, one record per optimiser step
    assert_same_stats(rs.stats, expected)
    assert list(rs.metrics["step"]) == [2, 4, 6] and rs.metrics["loss"].notna().all()
    config = io.read_json(tmp_path / "lit" / "config.json")
    assert config["trainer"]["accumulate_grad_batches"] == accumulate and config["source"] == "lightning"
    assert not all_hooks_empty(net)


@pytest.mark.parametrize("error, status", [(RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")])
def test_exception_in_training_step_leaves_no_hook(tmp_path, error, status):
    net = resviz.cifar_resnet(8, width=4)
    cb = RecorderCallback(every=1, out=tmp_path, run_id="boom")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit if error is KeyboardInterrupt else RuntimeError):
            trainer(cb).fit(Module(net, fail_at=3, error=error), data())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    assert not all_hooks_empty(net)
    st = runfolder.read_status(tmp_path / "boom")
    assert st["status"] == status and st["step"] == 3
    assert sorted(pd.read_parquet(tmp_path / "boom" / "stats.parquet")["step"].unique()) == [0, 1, 2]


def test_bf16_mixed_and_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet10t", num_classes=10, pretrained=False)
    metrics = ["response_std", "grad_norm"]  # a subset: what this test checks under bf16 (the blocks are known too)
    cb = RecorderCallback(every=2, metrics=metrics, out=tmp_path, run_id="timm")
    trainer(cb, precision="bf16-mixed", max_steps=3).fit(Module(net), data(24))
    rs = runs.load(tmp_path / "timm")
    assert rs.status.loc[0, "status"] == "done" and rs.status.loc[0, "arch"] == "ResNet"
    assert set(rs.stats["metric"].astype(str)) == set(metrics) and sorted(rs.stats["step"].unique()) == [0, 2]
    assert np.isfinite(rs.stats["value"]).all()
    assert "bf16" in io.read_json(tmp_path / "timm" / "config.json")["trainer"]["precision"]
    assert not all_hooks_empty(net)


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_compiled_module_records_like_eager(tmp_path):
    frames = {}
    for compiled in (False, True):
        L.seed_everything(0)
        net = resviz.cifar_resnet(8, width=4)
        module = Module(net)
        if compiled:  # aot_eager: dynamo + autograd tracing without a C++ compiler, quick on the CPU
            module = torch.compile(module, backend="aot_eager")
        cb = RecorderCallback(every=2, out=tmp_path, run_id=f"c{compiled}")
        trainer(cb, max_steps=3).fit(module, data(24))
        frames[compiled] = runs.load(tmp_path / f"c{compiled}").stats
        assert not all_hooks_empty(net)
    assert_same_stats(frames[True], frames[False], rtol=1e-4)


def test_image_classifier_validation_reaches_the_training_log(tmp_path):
    """ImageClassifier + tensor_loaders (what notebook 10 uses): the validation error lands as test_error, equal
    to the error of the trained net on the same validation batches computed here by hand."""
    import torch

    import resviz
    from resviz import datasets, runs
    from resviz.integrations.lightning_classifier import ImageClassifier, tensor_loaders

    data = datasets.load("digits", root=tmp_path / "data", progress=False)
    train_loader, test_loader = tensor_loaders(data, batch_size=32, seed=0)
    L.seed_everything(0)
    module = ImageClassifier(resviz.cifar_resnet(8, width=4), lr=0.05, milestones=(4,))
    callback = RecorderCallback(every=2, out=tmp_path / "runs", run_id="clf", log_every=6)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2,
                        val_check_interval=6, num_sanity_val_steps=0, callbacks=[callback])
    trainer.fit(module, train_loader, test_loader)
    metrics = runs.load(tmp_path / "runs" / "clf").metrics
    module.eval()
    with torch.no_grad():
        batches = list(test_loader)[:2]  # limit_val_batches=2: 256 + 104 images, the whole digits test split
        wrong = sum(int((module(x).argmax(1) != y).sum()) for x, y in batches)
    assert metrics["test_error"].notna().sum() == 1
    assert metrics["test_error"].dropna().iloc[0] == pytest.approx(wrong / sum(len(y) for _, y in batches))
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.005)  # /10 at the milestone
    with pytest.raises(ValueError, match="lr=-1 must be > 0"):
        ImageClassifier(resviz.cifar_resnet(8, width=4), lr=-1)
