"""A Hugging Face Trainer user's script, as the tests run it: under `torchrun --nproc-per-node 2` (CPU, gloo
through accelerate) or plain `python` for the one-process reference.

    python tests/hf_ddp_worker.py OUT

A tiny GPT-2 trains STEPS steps on GLOBAL_BATCH sequences per step (GLOBAL_BATCH / W per process), recorded by
resviz's RecorderCallback(every=1, out=OUT/runs), default run_id. The training sampler is sequential (a subclass
of Trainer): accelerate gives rank r the batches r, r + W, ..., so the ranks' batches at step k together are the
sequences one process has at step k. Each rank writes "<pid> <has a run-folder writer>" to OUT/pid-rank<r>.
"""
from __future__ import annotations

import os
import sys

import torch
import transformers

from resviz.integrations.transformers import RecorderCallback

STEPS, GLOBAL_BATCH = 3, 8


class SequentialTrainer(transformers.Trainer):
    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0,
                                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, 64, (STEPS * GLOBAL_BATCH, 16), generator=torch.Generator().manual_seed(1))
    args = transformers.TrainingArguments(
        output_dir=os.path.join(out, "hf"), max_steps=STEPS, per_device_train_batch_size=GLOBAL_BATCH // world,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    callback = RecorderCallback(every=1, out=os.path.join(out, "runs"))
    with callback:
        SequentialTrainer(model=model, args=args, train_dataset=[{"input_ids": t, "labels": t} for t in tokens],
                          callbacks=[callback]).train()
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out, f"pid-rank{rank}"), "w") as f:
        f.write(f"{os.getpid()} {callback.writer is not None}")


if __name__ == "__main__":
    main(sys.argv[1])
