"""Residual streams beyond ResNets: train a timm image model and a small GPT-2 on data every machine has, with
the Recorder on, and return the stats table (notebook 09).

    images:  the built-in digits (resviz.datasets, 8x8 grey) upscaled on the fly to `side` x `side`, 3 channels
    text:    the Python standard library's own source files as a byte-level corpus (vocabulary 256), read from
             `sysconfig.get_paths()["stdlib"]` in sorted order, so the corpus is the same on every run

Both loops are plain PyTorch (AdamW, cross-entropy, a fixed seed); the models go into the Recorder unchanged
(`timm.create_model(...)`, `transformers.GPT2LMHeadModel(config)`), which finds their residual adds through
its block-spec registry. timm and transformers are optional: each function imports what it needs.
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from resviz import datasets
from resviz.errors import UserError
from resviz.modes import train_mode
from resviz.probes import Recorder


@dataclass(frozen=True)
class StreamRun:
    """A trained model's stats table and its training loss per step (for the caption: what was measured)."""

    name: str
    stats: pd.DataFrame
    losses: list[float]
    data: str  # in words: "digits upscaled to 32x32, batch 32", "stdlib bytes, 64-byte windows, batch 16"
    seed: int


def _need(package: str, extra: str):
    try:
        return __import__(package)
    except ImportError as err:
        raise UserError(f"{package} is not installed: pip install 'resviz[{extra}]'") from err


def digit_batches(root, side: int, batch: int, seed: int):
    """An endless stream of (images (B, 3, side, side) normalised, labels (B,)) from the digits' train split."""
    data = datasets.load("digits", root, progress=False)
    x = data.train_images.float().div(255)  # (N, 1, 8, 8) or (N, 8, 8, 1)
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    x = (x - x.mean()) / x.std()
    y = data.train_labels.long()
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, len(y), (batch,), generator=g)
        xb = F.interpolate(x[idx], size=(side, side), mode="bilinear", align_corners=False)
        yield xb.expand(-1, 3, -1, -1).contiguous(), y[idx]


def stdlib_corpus(max_bytes: int) -> torch.Tensor:
    """The first `max_bytes` bytes of the standard library's .py files (sorted paths), as uint8 (L,)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        raw = path.read_bytes()
        chunks.append(raw)
        total += len(raw)
        if total >= max_bytes:
            break
    if total < 1024:
        raise UserError(f"found only {total} bytes of Python source under {root}: the standard library is missing")
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8)


def byte_batches(corpus: torch.Tensor, window: int, batch: int, seed: int):
    """An endless stream of (input ids (B, T), next-byte targets (B, T)) from random windows of the corpus."""
    g = torch.Generator().manual_seed(seed)
    ids = corpus.long()
    while True:
        start = torch.randint(0, len(ids) - window - 1, (batch, 1), generator=g)
        rows = ids[start + torch.arange(window + 1)]  # (B, T + 1)
        yield rows[:, :-1], rows[:, 1:]


def _train(name: str, model: nn.Module, batches, loss_fn, steps: int, every: int, lr: float, seed: int):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses = []
    with train_mode(model), Recorder(model, every=every, run_info={"run_id": name, "seed": seed}) as rec:
        for step in range(steps):
            x, y = next(batches)
            loss = loss_fn(model, x, y)
            loss.backward()
            rec.end_step(step)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    return rec.frame(), losses


def train_timm(name: str, *, steps: int, every: int, root, side: int = 32, batch: int = 32, lr: float = 1e-3,
               seed: int = 0, **model_kwargs) -> StreamRun:
    """Train timm model `name` (random init, 10 classes) on the upscaled digits with the Recorder on."""
    timm = _need("timm", "timm")
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10, **model_kwargs)
    stats, losses = _train(name, model, digit_batches(root, side, batch, seed),
                           lambda m, x, y: F.cross_entropy(m(x), y), steps, every, lr, seed)
    return StreamRun(name, stats, losses, f"built-in digits upscaled to {side}×{side}, batch {batch}", seed)


def train_gpt2(*, layers: int, width: int, steps: int, every: int, window: int = 64, batch: int = 16,
               corpus_bytes: int = 2_000_000, lr: float = 1e-3, seed: int = 0) -> StreamRun:
    """Train a small GPT-2 (random init, byte vocabulary) on the standard library's source with the Recorder on."""
    transformers = _need("transformers", "hf")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=256, n_positions=window, n_embd=width, n_layer=layers,
                                     n_head=max(1, width // 32), bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    corpus = stdlib_corpus(corpus_bytes)
    name = f"gpt2-{layers}x{width}"
    stats, losses = _train(name, model, byte_batches(corpus, window, batch, seed),
                           lambda m, x, y: m(input_ids=x, labels=x).loss, steps, every, lr, seed)
    note = f"Python stdlib source as bytes ({len(corpus):,} bytes), {window}-byte windows, batch {batch}"
    return StreamRun(name, stats, losses, note, seed)


def stream_table(runs: list[StreamRun]) -> pd.DataFrame:
    """Per run, recorded step and residual add: branch/skip ratio and the stream's std (skip_std: the stream
    entering the add), the numbers notebook 09 plots against depth."""
    frames = []
    for run in runs:
        rows = run.stats[run.stats["metric"].isin(["branch_ratio", "skip_std", "sum_std"])]
        wide = rows.pivot_table(index=["step", "layer_index"], columns="metric", values="value", observed=True)
        frames.append(wide.reset_index().assign(model=run.name, data=run.data, seed=run.seed))
    return pd.concat(frames, ignore_index=True)


__all__ = ["StreamRun", "byte_batches", "digit_batches", "stdlib_corpus", "stream_table", "train_gpt2", "train_timm"]
