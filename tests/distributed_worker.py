"""A user's training script, as the distributed tests launch it: `torchrun --nproc-per-node 2` (gloo, CPU),
or plain `python` for the one-process reference on the whole batch.

    python tests/distributed_worker.py OUT CASE [CASE ...]

Cases: "group" (GroupNorm ResNet-8 under DDP), "none" (unnormalised ResNet-8 under DDP), "gpt2" (a tiny GPT-2
under DDP), "fsdp" (GroupNorm ResNet-8 under FSDP2 `fully_shard`), "rank0-only" (a Recorder on rank 0 only),
"every" (rank 1 records with another `every`), "steps" (rank 1 flushes other steps). Each case trains 3 steps
of SGD on a fixed global batch of 8 (each of W ranks takes its 8/W examples), records every step and writes
the Recorder's frame to OUT/<case>-rank<r>.parquet on every rank (the tests check the ranks' frames agree);
a UserError goes to OUT/<case>-rank<r>.error and the next case runs ("rank0-only" last: it leaves the job
broken).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import resviz
from resviz.errors import UserError
from resviz.probes import Recorder

BATCH, STEPS = 8, 3


def _model(case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if case == "gpt2":
        import transformers

        config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_head=4, n_layer=2, n_positions=16,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(config)
    return resviz.cifar_resnet(8, norm="none" if case == "none" else "group", width=8)


def _batch(case: str, rank: int, world: int):
    g = torch.Generator().manual_seed(1)
    if case == "gpt2":
        x = torch.randint(0, 64, (BATCH, 16), generator=g)
        y = x
    else:
        x = torch.randn(BATCH, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (BATCH,), generator=g)
    part = BATCH // world
    return x[rank * part : (rank + 1) * part], y[rank * part : (rank + 1) * part]


def _loss(case: str, model, x, y):
    if case == "gpt2":
        return model(input_ids=x, labels=y).loss
    return F.cross_entropy(model(x), y)


def _wrap(case: str, net: torch.nn.Module, world: int) -> torch.nn.Module:
    if world == 1:
        return net
    if case == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for stage in (net.layer1, net.layer2, net.layer3):
            for block in stage:
                fully_shard(block)
        return fully_shard(net)
    return torch.nn.parallel.DistributedDataParallel(net)


def run(case: str, out: str, rank: int, world: int) -> None:
    base = "group" if case in ("fsdp", "rank0-only", "every", "steps") else case
    net = _model(base)
    model = _wrap(case, net, world)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch(base, rank, world)
    every = 2 if case == "every" and rank == 1 else 1
    if case == "rank0-only" and rank != 0:
        for _ in range(STEPS):
            _loss(base, model, x, y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return
    with Recorder(model, every=every) as rec:
        for step in range(STEPS):
            _loss(base, model, x, y).backward()
            rec.end_step(step + (1 if case == "steps" and rank == 1 else 0))
            opt.step()
            opt.zero_grad(set_to_none=True)
    rec.frame().to_parquet(os.path.join(out, f"{case}-rank{rank}.parquet"))


def main(argv: list[str]) -> None:
    out, cases = argv[0], argv[1:]
    torch.use_deterministic_algorithms(True)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    try:
        for case in cases:
            try:
                run(case, out, rank, world)
            except UserError as err:  # the one-line refusals the tests read; the next case still runs
                with open(os.path.join(out, f"{case}-rank{rank}.error"), "w") as f:
                    f.write(str(err))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
