"""A user's DDP script that checkpoints and resumes, as the tests run it under `torchrun --nproc-per-node 2`
(CPU, gloo):

    python tests/resume_worker.py OUT KILL_AT

A GroupNorm ResNet-8 (SGD with momentum) trains STEPS steps on batches that are a function of the step, recorded
every step. Every CHECKPOINT_EVERY steps every rank drains the Recorder (a collective) and rank 0 writes
OUT/stats.parquet (the rows so far) and OUT/checkpoint.pt (model, optimiser, step), each atomically. Rank 1 kills
itself (SIGKILL) at step KILL_AT (-1: never), which ends the job; the same command started again (as a scheduler
requeues a job) resumes both ranks from the checkpoint: the rows below its step are kept, the steps from there
recorded again (rank 0 writes the step it resumed at to OUT/resumed-at).
"""
from __future__ import annotations

import os
import signal
import sys

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F

import resviz
from resviz import schema
from resviz.probes import Recorder

STEPS, CHECKPOINT_EVERY, BATCH = 6, 2, 8


def batch(step: int, rank: int, world: int):
    g = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    part = BATCH // world
    return x[rank * part : (rank + 1) * part], y[rank * part : (rank + 1) * part]


def save(out: str, model, opt, step: int, rows: list[pd.DataFrame]) -> None:
    """Rank 0: the rows, then the checkpoint, each through a temporary name and os.replace."""
    schema.concat(rows).to_parquet(os.path.join(out, "stats.tmp"))
    os.replace(os.path.join(out, "stats.tmp"), os.path.join(out, "stats.parquet"))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, os.path.join(out, "ckpt.tmp"))
    os.replace(os.path.join(out, "ckpt.tmp"), os.path.join(out, "checkpoint.pt"))


def main(out: str, kill_at: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    net = resviz.cifar_resnet(8, norm="group", width=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    start, rows = 0, []
    if os.path.exists(os.path.join(out, "checkpoint.pt")):
        ckpt = torch.load(os.path.join(out, "checkpoint.pt"))
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = ckpt["step"]
        old = pd.read_parquet(os.path.join(out, "stats.parquet"))
        rows = [old[old["step"] < start]]
        if rank == 0:
            with open(os.path.join(out, "resumed-at"), "w") as f:
                f.write(str(start))
    model = torch.nn.parallel.DistributedDataParallel(net)
    with Recorder(model, every=1) as rec:
        rec.begin_step(start)
        for step in range(start, STEPS):
            x, y = batch(step, rank, world)
            F.cross_entropy(model(x), y).backward()
            if rank == 1 and step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            rec.end_step(step)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (step + 1) % CHECKPOINT_EVERY == 0:
                rows.append(rec.drain())
                if rank == 0:
                    save(out, net, opt, step + 1, rows)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
