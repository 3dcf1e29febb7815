"""Measurements a training run takes at each evaluation and at the end, beside the Recorder's train-mode rows.

    fixed_subset(total, n, seed)   the same n indices of a split for every run and every evaluation
    heldout_response_std(...)      He et al. Fig. 7 as the paper measures it: `response_std_eval` rows, the model
                                   in eval mode (running statistics) on a fixed held-out batch of test images;
                                   at step 0 (`calibrate=`) the running statistics are first estimated from
                                   training batches, on a copy of the net
    clean_train_error(...)         training error in eval mode on un-augmented training images (a fixed subset)

The Recorder's `response_std` is taken in train mode on the augmented batch, where a BatchNorm output's std is
fixed by its own γ and β (√(mean γ² + var β)), so it mostly shows γ; `response_std_eval` uses the running
statistics, so it shows how far the trained net's responses on unseen images are from unit variance.
Both reductions are the Recorder's (`heldout_response_std` records through a `Recorder`), and the error is
`resviz.evaluate.evaluate`'s; nothing here is a second implementation of either.
"""
from __future__ import annotations

import contextlib
import copy
import math

import pandas as pd
import torch
from torch import nn

from resviz import schema
from resviz.evaluate import evaluate
from resviz.loader import DeviceLoader
from resviz.models import unwrap
from resviz.modes import calibrated_eval, eval_mode
from resviz.probes import Recorder

HELDOUT_IMAGES = 256  # test images per held-out batch (one forward pass)
CLEAN_TRAIN_IMAGES = 1_000  # training images per clean-error measurement
CALIBRATION_BATCHES = 4  # training batches that estimate the running statistics of the step-0 measurement
SUBSET_SEED = 0  # the same images for every run, whatever its seed, so runs and seeds compare on equal data


def fixed_subset(total: int, n: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """n distinct indices of a split of `total` items, sorted, a pure function of (total, n, seed): (n,) int64.
    n >= total gives every index."""
    for name, value in (("total", total), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1 (a split size / a number of images)")
    if n >= total:
        return torch.arange(total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:n].sort().values


def _model_device(model: nn.Module) -> torch.device:
    return next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))


def _unhooked(model: nn.Module) -> nn.Module:
    """`model` itself, or, when another Recorder holds its modules (the training loop's), a copy with no hooks:
    same weights and running statistics, so the same outputs, and the training Recorder is left alone."""
    root = unwrap(model)
    if not Recorder.hooked(root):
        return root
    twin = copy.deepcopy(root)
    for m in twin.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                      "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(m, hooks, {}).clear()
    return twin


def _unhooked_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with no hooks (always a copy: a calibration pass changes its running statistics)."""
    twin = _unhooked(model)
    return copy.deepcopy(twin) if twin is unwrap(model) else twin


def _cuda_devices(model: nn.Module) -> list[int]:
    device = _model_device(model)
    return [device.index or 0] if device.type == "cuda" else []


def _normalised(images_u8: torch.Tensor, mean, std, device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) on `device`, normalised as the training loader does."""
    labels = torch.zeros(len(images_u8), dtype=torch.int64)
    loader = DeviceLoader(images_u8, labels, batch_size=len(images_u8), train=False, mean=mean, std=std,
                          device=device)
    (x, _), = list(loader)
    return x


def heldout_response_std(
    model: nn.Module,
    images_u8: torch.Tensor,
    mean,
    std,
    *,
    run_info: dict | None = None,
    step: int = 0,
    epoch: float = math.nan,
    calibrate: torch.Tensor | None = None,
) -> pd.DataFrame:
    """`response_std_eval` rows (one per norm layer) of `model` on `images_u8` (uint8 (N, 3, H, W), N >= 2,
    one forward pass), in eval mode with running statistics; each module's train/eval flag restored after.

    The rows are the Recorder's `response_std` (the same reduction: pooled std over N, C, H, W of each norm
    layer's output) renamed, stamped with `step` / `epoch` and `run_info` (Recorder keys: run_id, seed, ...).

    `calibrate` (normalised training inputs (B, 3, H, W), e.g. the first training batches): for a net whose
    running statistics were never estimated (at initialisation they are mean 0, variance 1, so eval mode would
    be the unnormalised net), measure a copy whose BatchNorm running statistics are first set to these inputs'
    batch statistics (`calibrated_eval`); the model, its buffers and the RNG are left as they were.
    """
    if images_u8.ndim != 4 or len(images_u8) < 2:
        raise ValueError(f"images_u8 must be a batch (N >= 2, 3, H, W), got shape {tuple(images_u8.shape)}; "
                         f"pass e.g. test_images[fixed_subset(len(test_images), {HELDOUT_IMAGES})]")
    target = _unhooked(model) if calibrate is None else _unhooked_copy(model)
    x = _normalised(images_u8, mean, std, _model_device(target))
    with contextlib.ExitStack() as stack:
        if calibrate is None:
            stack.enter_context(eval_mode(target))
        else:  # the calibration pass is a train-mode forward: no RNG it draws may reach training
            stack.enter_context(torch.random.fork_rng(devices=_cuda_devices(target)))
            stack.enter_context(calibrated_eval(target, calibrate.to(x.device)))
        rec = stack.enter_context(Recorder(target, every=1, metrics=["response_std"], run_info=run_info))
        with torch.no_grad():
            rec.begin_step(step)
            target(x)
            rec.end_step(step, epoch=epoch)
    frame = rec.frame()
    frame["metric"] = frame["metric"].astype(str).replace("response_std", "response_std_eval")
    return schema.coerce(frame)


def clean_train_error(
    model: nn.Module,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    *,
    batch_size: int = 1_000,
) -> float:
    """Fraction of `images_u8` (uint8 (N, 3, H, W), un-augmented: a fixed subset of the training split)
    that `model` misclassifies in eval mode (running statistics); its train/eval flags restored after."""
    with eval_mode(model):
        result = evaluate(model, images_u8, labels, mean=mean, std=std, batch_size=batch_size,
                          device=_model_device(model), progress=False)
    return 1.0 - result["accuracy"]


__all__ = ["CALIBRATION_BATCHES", "CLEAN_TRAIN_IMAGES", "HELDOUT_IMAGES", "SUBSET_SEED", "clean_train_error",
           "fixed_subset",
           "heldout_response_std"]
