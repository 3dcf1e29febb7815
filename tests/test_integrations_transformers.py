"""resviz.integrations.transformers: the RecorderCallback inside a real transformers.Trainer, tiny GPT-2, CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from helpers import all_hooks_empty
from resviz import io, runfolder, runs  # noqa: E402
from resviz.integrations.transformers import RecorderCallback  # noqa: E402


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def dataset(n: int = 32):
    tokens = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": t, "labels": t} for t in tokens]


def train(tmp_path, run_id, *, model=None, eval_steps=None, callback_kw=None, **kw):
    model = model or gpt2()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        logging_steps=2, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps, **kw)
    cb = RecorderCallback(every=1, metrics=["grad_norm"], out=tmp_path, run_id=run_id, **(callback_kw or {}))
    with cb:
        transformers.Trainer(model=model, args=args, train_dataset=dataset(),
                             eval_dataset=dataset(8) if eval_steps else None, callbacks=[cb]).train()
    return model


def test_gpt2_grad_norms_per_optimizer_step_and_eval_kept_out(tmp_path):
    model = train(tmp_path, "plain")
    train(tmp_path, "evaluated", eval_steps=1)
    rs = runs.load(tmp_path)
    assert set(rs.status["status"]) == {"done"}
    plain = rs.stats[rs.stats["run_id"] == "plain"].sort_values(["step", "layer"])
    evaluated = rs.stats[rs.stats["run_id"] == "evaluated"].sort_values(["step", "layer"])
    assert sorted(plain["step"].unique()) == [0, 1, 2, 3]  # 4 optimiser steps of 2 micro-batches each
    assert plain["layer"].nunique() == sum(1 for _ in model.parameters())
    np.testing.assert_allclose(plain["value"].to_numpy(), evaluated["value"].to_numpy(), rtol=1e-6)
    # the clipped gradient (max_grad_norm=1 by default): total norm <= 1 at every step
    total = plain.groupby("step")["value"].apply(lambda v: float(np.sqrt((v**2).sum())))
    assert (total <= 1.0 + 1e-5).all()
    config = io.read_json(tmp_path / "plain" / "config.json")
    assert config["arch"] == "GPT2LMHeadModel" and config["trainer"]["gradient_accumulation_steps"] == 2
    ev = rs.metrics[rs.metrics["run_id"] == "evaluated"]
    assert ev["test_loss"].notna().any() and ev["loss"].notna().any()
    assert not all_hooks_empty(model)


def test_exception_in_train_leaves_no_hook_and_failed(tmp_path):
    model = gpt2()
    calls = {"n": 0}
    forward = model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom in forward")
        return forward(*args, **kwargs)

    model.forward = failing_forward
    with pytest.raises(RuntimeError, match="boom"):
        train(tmp_path, "boom", model=model, remove_unused_columns=False)
    assert not all_hooks_empty(model)
    status = runfolder.read_status(tmp_path / "boom")
    assert status["status"] == "failed" and "boom" in status["reason"] and status["step"] == 2
    assert sorted(runs.load(tmp_path / "boom").stats["step"].unique()) == [0, 1]
