"""A Lightning user's script under the DDP strategy on 2 CPU processes (gloo), as the tests run it:

    python tests/lightning_ddp_worker.py OUT [devices]

Lightning starts the second process itself (it runs this script again). A GroupNorm ResNet-8 trains STEPS steps
with GLOBAL_BATCH / devices examples per process on a fixed dataset, recorded by resviz's
RecorderCallback(every=1, out=OUT/runs), default run_id. Each rank writes "<pid> <has a run-folder writer>" to
OUT/pid-rank<r> (the tests check who wrote the run folder).
"""
from __future__ import annotations

import os
import sys

import lightning as L
import torch
from torch import nn

import resviz
from resviz.integrations.lightning import RecorderCallback

STEPS, GLOBAL_BATCH = 3, 8


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = resviz.cifar_resnet(8, norm="group", width=8)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data(devices: int) -> torch.utils.data.DataLoader:
    """The same examples in every process; rank r takes the examples r, r + W, r + 2W, ... without shuffling (a
    DistributedSampler of our own: Lightning's would shuffle), so that together the ranks' batches at step k are
    the examples a one-process run on GLOBAL_BATCH has at step k."""
    g = torch.Generator().manual_seed(1)
    n = STEPS * GLOBAL_BATCH
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    dataset = torch.utils.data.TensorDataset(x, y)
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # Lightning's launcher sets it in the processes it starts
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=devices, rank=rank, shuffle=False)
    return torch.utils.data.DataLoader(dataset, batch_size=GLOBAL_BATCH // devices, sampler=sampler)


def main(out: str, devices: int) -> None:
    callback = RecorderCallback(every=1, out=os.path.join(out, "runs"))
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(Module(), data(devices))
    with open(os.path.join(out, f"pid-rank{trainer.global_rank}"), "w") as f:
        f.write(f"{os.getpid()} {callback.writer is not None}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
