"""Top-1 accuracy and mean cross-entropy of a model on a split, and the models `resviz evaluate` accepts."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from resviz.loader import DeviceLoader, resolve_device
from resviz.models import cifar_resnet
from resviz.modes import eval_mode
from resviz.pretrained import AKAMASTER_MEAN, AKAMASTER_STD, pretrained
from resviz.runfolder import CHECKPOINT_FILE, CONFIG_FILE, load_checkpoint


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean,
    std,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict:
    """{"accuracy": fraction correct, "loss": mean cross-entropy, "n": images} of `model` on uint8 images
    (N, 3, 32, 32) normalised with mean/std (0..1 scale). Moves the model to `device`, runs it in eval mode
    and restores each module's train/eval mode afterwards; one host sync, at the end."""
    if len(labels) == 0:
        raise ValueError("evaluate got 0 images; pass a non-empty split")
    classes = num_classes(model)
    top = int(labels.max())  # on the host, before any device work
    if classes is not None and top >= classes:
        raise ValueError(
            f"labels go up to {top} but the model has {classes} outputs; evaluate it on a dataset with {classes} classes"
        )
    dev = resolve_device(device)
    loader = DeviceLoader(images, labels, batch_size=batch_size, train=False, mean=mean, std=std, device=dev)
    model.to(dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    with eval_mode(model):
        for x, y in tqdm(loader, desc="evaluating", unit="batch", disable=not progress, leave=False):
            logits = model(x).float()  # (B, classes)
            correct += (logits.argmax(1) == y).sum()
            loss += F.cross_entropy(logits, y, reduction="sum").double()
    n = len(labels)
    acc, mean_loss = torch.stack([correct.double() / n, loss / n]).tolist()  # the one host sync
    return {"accuracy": acc, "loss": mean_loss, "n": n}


def load_model_for_eval(name_or_path: str | os.PathLike) -> tuple[nn.Module, tuple, tuple]:
    """(model, mean, std) for `resviz evaluate --checkpoint`: an akamaster name or checkpoint file, with the
    normalisation it was trained with. Extend here for other checkpoint kinds (e.g. run folders runs/<id>/)."""
    if os.path.isdir(name_or_path):
        return load_run_model(name_or_path)
    parent = os.path.dirname(os.path.abspath(name_or_path))
    if os.path.basename(str(name_or_path)) == CHECKPOINT_FILE and os.path.isfile(os.path.join(parent, CONFIG_FILE)):
        return load_run_model(parent)  # a run's checkpoint.pt: the run folder it is in says what it holds
    return pretrained(name_or_path), AKAMASTER_MEAN, AKAMASTER_STD


def load_run_model(folder: str | os.PathLike) -> tuple[nn.Module, tuple, tuple]:
    """(model, mean, std) of a run folder written by `resviz train` (runs/<id>/checkpoint.pt), in eval mode."""
    ckpt_path = Path(folder) / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"--checkpoint {folder} is a folder without checkpoint.pt; pass a run folder written by "
            "`resviz train` (runs/<id>/), an akamaster name (resnet20..resnet1202) or a .th file"
        )
    try:
        ckpt = load_checkpoint(ckpt_path)  # weights_only: a crafted pickle cannot run code
        config = ckpt["config"]
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ValueError(f"{ckpt_path} is not a resviz run checkpoint ({type(err).__name__}); "
                         "delete it and resume the run to rewrite it") from None
    model = cifar_resnet(config["depth"], plain=config["arch"] == "plain", shortcut=config["shortcut"],
                         norm=config["norm"], branch_init=config["branch_init"], width=config["width"],
                         num_classes=len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), tuple(ckpt["mean"]), tuple(ckpt["std"])


def num_classes(model: nn.Module) -> int | None:
    spec = getattr(model, "spec", None)
    return getattr(spec, "num_classes", None)


__all__ = ["evaluate", "load_model_for_eval", "load_run_model", "num_classes"]
