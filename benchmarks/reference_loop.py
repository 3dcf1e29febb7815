"""The usual way to train a CIFAR ResNet, as the speed reference for resviz's loop (benchmarks/train_speed.py).

Written as akamaster's trainer.py and the PyTorch CIFAR tutorial do: a torchvision-style dataset that turns a
HWC uint8 array into a PIL image per sample (as `torchvision.datasets.CIFAR10.__getitem__`), PIL transforms
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) in DataLoader worker processes, pinned
memory on CUDA, an eager fp32 model with cudnn.benchmark on (akamaster sets it), and `.item()` on the loss and
the accuracy every batch. No statistics are recorded.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class PILImages(Dataset):
    """(PIL-transformed image, label) per index from uint8 images (N, 3, H, W), like torchvision's CIFAR10."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())  # (N, H, W, 3) as CIFAR10.data
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.fromarray(self.data[index])
        return self.transform(img), self.targets[index]


def reference_loader(images: torch.Tensor, labels: torch.Tensor, *, mean, std, batch_size: int, workers: int,
                     augment: bool = True, shuffle: bool = True, pin_memory: bool = False) -> DataLoader:
    """DataLoader over PIL images with the usual CIFAR transforms (augmentation when `augment`)."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])
    return DataLoader(PILImages(images, labels, transform), batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, pin_memory=pin_memory, drop_last=True)


class ReferenceLoop:
    """SGD steps the usual way; `run(k)` trains k batches (starting new epochs, and new workers, as needed)."""

    def __init__(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, lr: float = 0.1,
                 name: str = "reference"):
        self.name = name
        self.model = model.to(device).train()
        self.loader = loader
        self.batch_size = loader.batch_size
        self.device = device
        self.rates: list[float] = []  # images/s per timed chunk (filled by the benchmark)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        self._batches = iter(())
        self.losses: list[float] = []
        self.correct = 0

    def _next(self):
        try:
            return next(self._batches)
        except StopIteration:  # a new epoch: the DataLoader starts its workers again
            self._batches = iter(self.loader)
            return next(self._batches)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x, y = self._next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.item())  # host sync every batch, as usual
            self.correct += (out.argmax(1) == y).sum().item()


def timed(fn, steps: int, device: torch.device) -> float:
    """Wall seconds of fn(steps), the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


__all__ = ["PILImages", "ReferenceLoop", "reference_loader", "timed"]
