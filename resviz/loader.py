"""The one on-device loader: a whole split kept on the device as uint8, augmented and normalised there.

`DeviceLoader(images, labels, batch_size=..., train=..., mean=..., std=..., device=...)`:
    train=True   a stream of batches that is a pure function of (seed, step): the epoch's order is seeded by
                 (seed, epoch) and each batch's augmentation (4-pixel zero pad, random 32x32 crop, horizontal
                 flip) by (seed, step). `batch(step)` gives any step's batch directly (the training loop uses
                 it, so a resumed run sees exactly the batches an uninterrupted one would); iterating gives the
                 rest of the current epoch; `state_dict()` / `load_state_dict()` carry the position.
    train=False  the split in order, whole, not augmented; every iteration starts afresh (evaluation).
No DataLoader workers, no PIL: the benchmark is benchmarks/loader.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4  # augmentation: zero padding on each side before the random crop

# Generator seeds of the training stream. The constants are arbitrary but fixed, since changing them changes
# every run's batches (and a resumed run must see the ones it would have seen): the prime 1_000_003 gives each
# seed its own range of a million epoch seeds, and the prime 7_919 spreads the steps' augmentation seeds apart
# from the epochs' order seeds (step 0 -> +7_920, while the orders use +0, +1, +2, ...).
SEED_STRIDE = 1_000_003
STEP_STRIDE = 7_919


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; a CUDA device on a machine without one is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a device; use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine; use cpu or auto")
    return dev


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """He et al.'s CIFAR augmentation on a uint8 batch (B, C, H, W), on its own device: zero-pad 4 pixels,
    take a random HxW crop, flip it horizontally with probability 1/2. Draws offsets, then flips."""
    b, c, h, w = images.shape
    dev = images.device
    hp, wp = h + 2 * PAD, w + 2 * PAD
    padded = F.pad(images, (PAD, PAD, PAD, PAD)).view(b, c, hp * wp)  # (B, C, (H+8)*(W+8))
    dy = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator, device=dev)  # (B, 1) crop top
    dx = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator, device=dev)  # (B, 1) crop left
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=dev).bool()  # (B, 1)
    rows = dy + torch.arange(h, device=dev)  # (B, H) source rows
    cols = dx + torch.where(flip, torch.arange(w - 1, -1, -1, device=dev), torch.arange(w, device=dev))  # (B, W)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)  # (B, C, H*W)
    return padded.gather(2, index).view(b, c, h, w)


class DeviceLoader:
    """Batches `(x float (B, 3, H, W), y int64 (B,))` of a split kept on `device` as uint8.

    train=True: batches keyed by step (see the module docstring), `augment` on every batch unless
    augment=False, the last partial batch dropped (unless drop_last=False). Iterating yields the rest of the
    current epoch: breaking out of one leaves the loader there, and the next iteration finishes that epoch.
    train=False: the set in order, whole, no augmentation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        mean,
        std,
        device: str | torch.device = "cpu",
        seed: int = 0,
        augment: bool = True,
        drop_last: bool | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} must have one entry per image ({len(images)})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        self.drop_last = train if drop_last is None else drop_last
        if self.drop_last and len(labels) < batch_size:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {len(labels)} images, so no full batch exists; "
                "use a smaller batch_size or drop_last=False"
            )
        self.device = resolve_device(device)
        self.images = images.to(self.device)  # (N, 3, H, W) uint8, resident on the device
        self.labels = labels.to(self.device, torch.int64)  # (N,)
        self.n = len(labels)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.augment = augment
        self.channels_last = channels_last
        self.dtype = dtype
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = (1 / (255 * std_t)).to(self.device)  # x = u8 * scale + shift = (u8/255 - mean) / std
        self._shift = (-mean_t / std_t).to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.step = 0  # the next training batch to yield
        self._order_epoch: int | None = None  # the epoch whose order is in self._order
        self._order: torch.Tensor | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    @property
    def epoch(self) -> int:
        """Training epochs completed."""
        return self.step // len(self)

    def epoch_of(self, step: int) -> float:
        """Epochs of images seen after `step` training batches (fractional)."""
        return step * self.batch_size / self.n

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of the training split for `epoch`, (N,) on the device; kept for the current epoch."""
        if epoch != self._order_epoch:
            self.generator.manual_seed(self.seed * SEED_STRIDE + epoch)
            self._order = torch.randperm(self.n, generator=self.generator, device=self.device)
            self._order_epoch = epoch
        return self._order

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of `step` (0-based), a pure function of (seed, step)."""
        epoch, k = divmod(step, len(self))
        idx = self.order(epoch)[k * self.batch_size : (k + 1) * self.batch_size]  # (B,)
        x = self.images[idx]  # (B, 3, H, W) uint8
        if self.augment:
            self.generator.manual_seed(self.seed * SEED_STRIDE + STEP_STRIDE * (step + 1) + 1)
            x = augment(x, self.generator)
        return self._normalise(x), self.labels[idx]

    def __iter__(self):
        return self._train_epoch() if self.train else self._eval_epoch()

    def _eval_epoch(self):
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self._normalise(self.images[sl]), self.labels[sl]

    def _train_epoch(self):
        end = (self.step // len(self) + 1) * len(self)  # the end of the epoch the next batch belongs to
        while self.step < end:
            step = self.step
            self.step += 1
            yield self.batch(step)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, H, W) -> dtype (B, 3, H, W)
        out = torch.addcmul(self._shift, x.to(torch.float32), self._scale).to(self.dtype)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def state_dict(self) -> dict:
        """Where the training stream is: the next step, and what the batches are keyed by."""
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if (state["n"], state["batch_size"]) != (self.n, self.batch_size):
            raise ValueError(
                f"loader state is for {state['n']} images in batches of {state['batch_size']}, this loader has "
                f"{self.n} in batches of {self.batch_size}; resume with the same data and batch_size"
            )
        self.seed = state["seed"]
        self.step = state["step"]
        self._order_epoch = None
