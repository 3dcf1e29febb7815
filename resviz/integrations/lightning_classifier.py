"""A ready LightningModule for image classification, and loaders from a resviz `Dataset`, so a notebook (or a
newcomer) can train any resviz, torchvision or timm net under `lightning.Trainer` without writing a class.

    data = resviz.datasets.load("digits")
    train, val = tensor_loaders(data, batch_size=64, seed=0)
    module = ImageClassifier(resviz.cifar_resnet(20), lr=0.1)
    L.Trainer(max_steps=400, callbacks=[RecorderCallback(every=20, out="runs")]).fit(module, train, val)

`ImageClassifier` follows He et al.'s recipe by default (SGD, momentum 0.9, weight decay 1e-4, the learning rate
divided by 10 at `milestones`), logs `train_loss` and, on the validation loader, `val_error` and `val_loss`.
Augmentation is not applied here: the loaders give the images as they are, normalised per channel with the
training split's mean and std (resviz's own trainer augments on the device; see `resviz.loader`).
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def _normalised(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalised with per-channel mean and std given on 0..1."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images_u8.float() / 255 - m) / s


def tensor_loaders(dataset, batch_size: int = 128, *, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """(train loader, shuffled with `seed`; test loader, in order) of a resviz `Dataset`, as float tensors."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    train = TensorDataset(_normalised(dataset.train_images, dataset.mean, dataset.std), dataset.train_labels)
    test = TensorDataset(_normalised(dataset.test_images, dataset.mean, dataset.std), dataset.test_labels)
    shuffle = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=shuffle, drop_last=True),
            DataLoader(test, batch_size=max(batch_size, 256)))


class ImageClassifier(pl.LightningModule):
    """Cross-entropy training of `net` (any nn.Module mapping images to logits) with He et al.'s optimiser."""

    def __init__(self, net: nn.Module, *, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4,
                 milestones: tuple[int, ...] = ()):
        super().__init__()
        if not lr > 0 or not 0 <= momentum < 1 or not weight_decay >= 0:
            raise ValueError(f"lr={lr} must be > 0, momentum={momentum} in [0, 1), weight_decay={weight_decay} >= 0")
        self.net = net
        self.lr, self.momentum, self.weight_decay, self.milestones = lr, momentum, weight_decay, tuple(milestones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_error", (logits.argmax(1) != y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if not self.milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(self.milestones), gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
