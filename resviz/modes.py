"""The one train/eval switcher: a net in the mode a loop, an evaluation or an experiment needs, put back
exactly on exit.

Every switch here is built on `restored(model)`, which saves each module's `training` flag (and, for the
switches that run train-mode passes, every buffer and every BatchNorm's momentum) and puts them back in
`finally`, so a `with` that raises leaves the net as it was:

    train_mode(model)               training (batch statistics, dropout on), for a training loop
    eval_mode(model)                running statistics (each module's own flag restored on exit)
    batch_stats_mode(model)         batch statistics, running statistics left untouched
    calibrated_eval(model, inputs)  running statistics set to `inputs`' batch statistics, then eval mode

    with batch_stats_mode(net), torch.no_grad():
        logits = net(batch)         # BN normalises with this batch's statistics; nothing of the net changes
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def restored(model: nn.Module, *, buffers: bool = False) -> Iterator[nn.Module]:
    """Every module's `training` flag put back on exit; with `buffers`, every buffer's values and every
    BatchNorm's momentum too (for switches that run train-mode passes, which update running statistics)."""
    modes = {m: m.training for m in model.modules()}
    saved = {name: b.detach().clone() for name, b in model.named_buffers()} if buffers else {}
    momenta = {m: m.momentum for m in _batch_norms(model)} if buffers else {}
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved:
                    b.copy_(saved[name])
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in train mode inside the `with` (a training loop; running statistics are updated as
    training does); each module's own flag restored on exit."""
    with restored(model):
        model.train()
        yield model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode inside the `with`; each module's own flag restored on exit."""
    with restored(model):
        model.eval()
        yield model


@contextlib.contextmanager
def batch_stats_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode (norms use batch statistics) without changing running statistics; all restored on exit."""
    with restored(model, buffers=True):
        model.train()
        yield model


@contextlib.contextmanager
def calibrated_eval(model: nn.Module, inputs: torch.Tensor) -> Iterator[nn.Module]:
    """Eval mode, with every BatchNorm's running stats set to `inputs`' batch statistics; restored on exit."""
    with restored(model, buffers=True):
        bns = _batch_norms(model)
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: after one pass, running = batch statistics
            model.train()
            with torch.no_grad():
                model(inputs)
        model.eval()
        yield model


__all__ = ["batch_stats_mode", "calibrated_eval", "eval_mode", "restored", "train_mode"]
