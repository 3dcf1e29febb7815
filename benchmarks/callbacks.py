"""Overhead of resviz's trainer callbacks: the same Lightning / Hugging Face training with and without the
RecorderCallback (every=20), interleaved, median of the repeats; prints a table for BENCHMARKS.md.

    .venv/bin/python benchmarks/callbacks.py [--steps 100] [--repeats 3] [--threads 1]

Lightning: resviz.cifar_resnet(depth, width 16), batch 64 of random 32x32 images, SGD, CPU, all default metrics.
Hugging Face: a 4-layer GPT-2 (n_embd 128), batch 8 x 64 tokens, all default metrics (both residual adds of
every block, every LayerNorm, every parameter's gradient). Times are of `fit` / `train` as a whole (the callback's writes included), after one
untimed warm-up run of each.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn


def lightning_run(steps: int, depth: int, callback: bool, out: str) -> float:
    import lightning as L

    import resviz
    from resviz.integrations.lightning import RecorderCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = resviz.cifar_resnet(depth, width=16)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    x, y = torch.randn(64 * 8, 3, 32, 32), torch.randint(0, 10, (64 * 8,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    cbs = [RecorderCallback(every=20, out=out)] if callback else []
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=cbs)
    module = Module()
    t = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - t


def hf_run(steps: int, callback: bool, out: str) -> float:
    import transformers

    from resviz.integrations.transformers import RecorderCallback

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=512,
                                                                 n_positions=64, bos_token_id=0, eos_token_id=0))
    tokens = torch.randint(0, 512, (64, 64))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = transformers.TrainingArguments(output_dir=os.path.join(out, "hf"), max_steps=steps,
                                          per_device_train_batch_size=8, save_strategy="no", report_to=[],
                                          use_cpu=True, disable_tqdm=True, logging_steps=20)
    cbs = [RecorderCallback(every=20, out=out)] if callback else []
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=cbs)
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        cases = {
            f"Lightning, ResNet-{args.depth} w16, batch 64": lambda cb: lightning_run(args.steps, args.depth, cb, out),
            "Hugging Face, GPT-2 4x128, batch 8x64": lambda cb: hf_run(args.steps, cb, out),
        }
        for name, run in cases.items():
            run(False), run(True)  # warm-up: imports, allocator, first-call costs
            times = {False: [], True: []}
            for _ in range(args.repeats):
                for cb in (False, True):  # interleaved, so drifts in machine load hit both
                    times[cb].append(run(cb))
            base, with_cb = statistics.median(times[False]), statistics.median(times[True])
            rows.append((name, base / args.steps * 1e3, with_cb / args.steps * 1e3, with_cb / base))
    print(f"\n{args.steps} steps, every=20, CPU, {args.threads} thread(s), median of {args.repeats} interleaved runs\n")
    print("| trainer | ms/step without | ms/step with RecorderCallback | ratio |")
    print("|---|---:|---:|---:|")
    for name, a, b, r in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {r:.3f}x |")


if __name__ == "__main__":
    main()
