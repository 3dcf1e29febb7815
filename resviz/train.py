"""The training loop: He et al.'s CIFAR recipe with the Recorder inside, checkpoints, resume, divergence.

Host synchronisation happens only at the boundaries marked `# SYNC`: every `log_every` steps (loss and
training error read back, divergence and warm-up checked), at evaluation and at checkpoints. On CUDA,
RESVIZ_SYNC_DEBUG=error runs the steps between boundaries (after the first interval, which compiles and
autotunes) under `torch.cuda.set_sync_debug_mode("error")`, so a hidden sync raises.
Speed switches: channels_last, amp (bf16 autocast; the Recorder reduces in fp32), cudnn_benchmark, compile and
compile_mode ("reduce-overhead": CUDA graphs; the Recorder's statistics are copied out of the graph at each
end_step). A compiler that fails at the first compiled step (e.g. no working C++ compiler for inductor) falls
back to eager with a one-line warning; out of GPU memory, the run is marked failed with the largest batch that
fits (halving probe).
Batches are a pure function of (seed, step): the epoch's permutation is seeded by (seed, epoch) and the
augmentation by (seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from resviz import datasets, runs, schema
from resviz.evaluate import evaluate
from resviz.models import check_depth, cifar_resnet

PAPER_STEPS = 64_000  # He et al.: 64k iterations at batch 128 ...
PAPER_MILESTONES = (32_000, 48_000)  # ... lr / 10 at 32k and 48k
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # modes that replay CUDA graphs on CUDA
COMPILE_BACKEND_ENV = "RESVIZ_COMPILE_BACKEND"  # torch.compile backend (default inductor); tests use aot_eager
SYNC_DEBUG_ENV = "RESVIZ_SYNC_DEBUG"  # "warn" | "error": torch.cuda.set_sync_debug_mode between sync boundaries


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are He et al. 2015's CIFAR-10 recipe (Sec. 4.2)."""

    # what to train
    dataset: str = "cifar10"  # "digits" | "cifar10" | "imagefolder:PATH"
    root: str = "data"  # where datasets and their caches live
    arch: str = "resnet"  # "resnet" | "plain"
    depth: int = 20  # 6n+2 layers
    norm: str = "batch"  # "batch" | "layer" | "group" | "none"
    shortcut: str = "A"  # "A" (zero-padded identity) | "B" (1x1 projection); ignored for plain nets
    branch_init: str | None = None  # None | "skipinit" | "rezero" | "fixup"
    width: int = 16  # filters in stage 1 (stage 2 and 3 have 2x and 4x)
    seed: int = 0  # model init, batch order and augmentation
    # the schedule, in iterations (optimiser steps)
    steps: int = PAPER_STEPS  # total iterations
    batch_size: int = 128  # images per iteration
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 1e-4  # L2 on every parameter, as in the paper
    milestones: tuple[int, ...] = PAPER_MILESTONES  # iterations of a `schedule_steps`-long run where lr /= 10
    schedule_steps: int = PAPER_STEPS  # length the milestones refer to: they scale by steps / schedule_steps
    lr_decay: float = 0.1  # factor applied at each milestone
    warmup: str = "auto"  # "auto" (on for depth >= 110, as the paper's ResNet-110) | "on" | "off"
    warmup_lr: float = 0.01  # learning rate during warm-up
    warmup_steps: int = 400  # warm-up ends at this iteration, or earlier once training error < warmup_error
    warmup_error: float = 0.8  # training-error threshold (fraction) that ends the warm-up
    augment: bool = True  # 4-pixel zero pad + random 32x32 crop + horizontal flip
    train_subset: int | None = None  # use only the first N training images (None: all)
    # measurement and bookkeeping
    record_every: int = 20  # Recorder statistics every k iterations (64k/20 = 3,200 points in a full run)
    record_metrics: tuple[str, ...] | None = None  # None: all of the Recorder's default metrics
    log_every: int = 100  # iterations per training-metrics row (loss, training error, lr, images/s)
    eval_every: int = 1_000  # iterations between test-error evaluations (and at the end)
    checkpoint_every: int = 1_000  # iterations between checkpoints; a multiple of log_every
    eval_batch_size: int = 1_000  # images per evaluation batch
    # speed switches (numerics unchanged up to floating point)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    channels_last: bool = False  # NHWC memory format for convs
    amp: bool = False  # bf16 autocast (statistics still reduced in fp32)
    compile: bool = False  # torch.compile the model (falls back to eager with a warning)
    compile_mode: str = "default"  # torch.compile mode: "default" | "reduce-overhead" (CUDA graphs) | "max-autotune"
    cudnn_benchmark: bool = True  # let cuDNN time its convolution algorithms once per shape (CUDA only)
    progress: bool = True  # tqdm progress bar

    # fields that may change when resuming a run (they do not change its numbers beyond floating point)
    RESUME_SAFE = ("device", "progress", "root", "compile", "compile_mode", "cudnn_benchmark", "eval_batch_size")

    def validate(self) -> "TrainConfig":
        check_depth(self.depth)
        if self.arch not in ("resnet", "plain"):
            raise ValueError(f"arch={self.arch!r} is unknown; use 'resnet' or 'plain'")
        cifar_resnet(8, plain=self.arch == "plain", shortcut=self.shortcut, norm=self.norm,
                     branch_init=self.branch_init, width=self.width)  # same checks as the real model, cheaply
        for name in ("steps", "batch_size", "record_every", "log_every", "eval_every", "checkpoint_every",
                     "eval_batch_size", "schedule_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} must be a multiple of log_every={self.log_every}"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r} is unknown; use one of: {', '.join(COMPILE_MODES)}")
        if self.warmup not in ("auto", "on", "off"):
            raise ValueError(f"warmup={self.warmup!r} is unknown; use 'auto', 'on' or 'off'")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be positive")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset={self.train_subset!r} must be a positive number of images or None")
        return self

    @property
    def scaled_milestones(self) -> tuple[int, ...]:
        """Milestones for this run's length: 32k/48k of 64k become 50 % and 75 % of `steps`."""
        return tuple(int(round(m * self.steps / self.schedule_steps)) for m in self.milestones)

    @property
    def warmup_enabled(self) -> bool:
        return self.warmup == "on" or (self.warmup == "auto" and self.depth >= 110)

    @property
    def run_id(self) -> str:
        """A readable name that identifies the run's main choices; sweeps use it to skip finished runs."""
        data = self.dataset.split(":", 1)[0] if self.dataset.startswith("imagefolder:") else self.dataset
        if self.dataset.startswith("imagefolder:"):
            data = "if-" + Path(self.dataset.split(":", 1)[1]).name
        parts = [data, f"{self.arch}{self.depth}", self.norm]
        if self.arch == "resnet":
            parts.append(f"sc{self.shortcut}")
        if self.branch_init:
            parts.append(self.branch_init)
        if self.width != 16:
            parts.append(f"w{self.width}")
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["record_metrics"] = list(self.record_metrics) if self.record_metrics is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(known)}")
        kw = {}
        for k, v in d.items():
            default = getattr(cls, k)
            if k in ("milestones", "record_metrics") and v is not None:
                if not isinstance(v, (list, tuple)):
                    raise ValueError(f"config key {k!r} must be a list, got {v!r}")
                v = tuple(int(x) for x in v) if k == "milestones" else tuple(str(x) for x in v)
            elif k in ("branch_init", "train_subset") and v is None:
                pass
            elif isinstance(default, bool):
                if not isinstance(v, bool):
                    raise ValueError(f"config key {k!r} must be true or false, got {v!r}")
            elif isinstance(default, int):
                if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
                    raise ValueError(f"config key {k!r} must be an integer, got {v!r}")
                v = int(v)
            elif isinstance(default, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"config key {k!r} must be a number, got {v!r}")
                v = float(v)
            elif isinstance(default, str) and not isinstance(v, str):
                raise ValueError(f"config key {k!r} must be a string, got {v!r}")
            kw[k] = v
        return cls(**kw)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    folder: Path
    status: str  # done | diverged | failed | interrupted
    step: int
    train_error: float
    test_error: float
    seconds: float
    reason: str = ""
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ small pieces
def learning_rate(config: TrainConfig, step: int, warmup_until: int | None) -> float:
    """Learning rate for iteration `step` (0-based): warm-up, then step decay at the scaled milestones."""
    if warmup_until is not None and step < warmup_until:
        return config.warmup_lr
    drops = sum(step >= m for m in config.scaled_milestones)
    return config.lr * config.lr_decay**drops


def versions() -> dict:
    from resviz import __version__

    return {"resviz": __version__, "torch": torch.__version__, "python": platform.python_version()}


class BatchStream:
    """Training batches as a pure function of (seed, step), on the device, augmented there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, mean, std, device):
        self.images = images.to(device)  # (N, 3, 32, 32) uint8, resident on the device
        self.labels = labels.to(device)
        self.n = len(images)
        self.batch_size = config.batch_size
        self.per_epoch = self.n // self.batch_size  # drop_last: every batch has batch_size images
        self.seed = config.seed
        self.augment = config.augment
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.generator = torch.Generator(device=self.device)
        self._epoch = None
        self._perm = None

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.generator.manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=self.generator, device=self.device)
            self._epoch = epoch
        idx = self._perm[k * self.batch_size:(k + 1) * self.batch_size]
        x = self.images[idx]  # (B, 3, 32, 32) uint8
        if self.augment:
            self.generator.manual_seed(self.seed * 1_000_003 + 7_919 * (step + 1) + 1)
            x = datasets.augment(x, self.generator)
        return (x.float() - self.mean) / self.std, self.labels[idx]


def _autocast(device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def forward_backward(call, x: torch.Tensor, y: torch.Tensor, *, amp: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward (bf16 autocast if `amp`) and backward pass: (logits (B, classes), loss ()). The loss
    is taken in fp32; no host sync."""
    with _autocast(device, amp):
        logits = call(x)  # (B, classes)
    loss = F.cross_entropy(logits.float(), y)  # ()
    loss.backward()
    return logits, loss


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def compile_model(model: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """`torch.compile(model, mode=mode)` with the backend named by $RESVIZ_COMPILE_BACKEND (default inductor; the
    mode applies to inductor only). Compiling is lazy: a missing compiler shows at the first call, which
    `train` guards. Where torch.compile itself refuses, warn and return the eager model."""
    backend = os.environ.get(COMPILE_BACKEND_ENV, "") or "inductor"
    try:
        if backend == "inductor":
            return torch.compile(model, mode=None if mode == "default" else mode)
        return torch.compile(model, backend=backend)
    except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
        warnings.warn(f"torch.compile is not available here ({_first_line(err)}); training eager", stacklevel=2)
        return model


def _guarded_step(call, model, rec, step: int, x, y, *, amp: bool, device):
    """forward_backward through the compiled `call` at the first call of one of its graphs, where a compiler
    failure surfaces (forward: tracing and code generation; backward: its lazy compile). On failure, warn in
    one line, undo what the failed attempt changed (BatchNorm buffers, gradients, the Recorder's step) and
    redo the step eager. Returns (logits, loss, the callable to use from now on)."""
    saved = [b.detach().clone() for b in model.buffers()]  # a forward that ran before a failed backward moved these
    try:
        return (*forward_backward(call, x, y, amp=amp, device=device), call)
    except (KeyboardInterrupt, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - a compiler that does not work here: train eager
        warnings.warn(f"torch.compile failed at its first step ({_first_line(err)}); training eager instead",
                      stacklevel=3)
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)
    model.zero_grad(set_to_none=True)
    rec.begin_step(step)  # forget what the failed attempt's hooks wrote
    return (*forward_backward(model, x, y, amp=amp, device=device), model)


class _SyncCheck:
    """torch.cuda.set_sync_debug_mode($RESVIZ_SYNC_DEBUG) over the steps between sync boundaries, on CUDA.
    Armed from the end of the first logging interval: compiling, cuDNN autotuning and CUDA-graph recording
    happen in the first one and may synchronise."""

    def __init__(self, device: torch.device):
        mode = os.environ.get(SYNC_DEBUG_ENV, "")
        if mode not in ("", "warn", "error"):
            raise ValueError(f"{SYNC_DEBUG_ENV}={mode!r} is unknown; use warn, error or leave it unset")
        self.mode = mode if mode and device.type == "cuda" else None

    def arm(self) -> None:
        if self.mode:
            torch.cuda.set_sync_debug_mode(self.mode)

    def disarm(self) -> None:
        if self.mode:
            torch.cuda.set_sync_debug_mode(0)

    def __enter__(self) -> "_SyncCheck":
        return self

    def __exit__(self, *exc) -> None:
        self.disarm()


def largest_batch(model, start: int, *, amp: bool, channels_last: bool, device) -> int:
    """The largest batch start/2, start/4, ..., 1 for which one training forward+backward of the resviz `model`
    fits in GPU memory (with whatever else is allocated now); 0 if not even one image fits. CUDA only."""
    batch = start // 2
    classes = model.spec.num_classes
    while batch >= 1:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        try:
            x = torch.randn(batch, 3, datasets.SIZE, datasets.SIZE, device=device)  # (b, 3, 32, 32)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            forward_backward(model, x, torch.randint(0, classes, (batch,), device=device), amp=amp, device=device)
            return batch
        except torch.cuda.OutOfMemoryError:
            pass  # the failed attempt's tensors are freed when the handler ends
        finally:
            x = None
            model.zero_grad(set_to_none=True)
        batch //= 2
    return 0


def _config_diff(old: dict, new: dict) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(TrainConfig.RESUME_SAFE) - {"run_id", "versions"})
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def prepare_folder(config: TrainConfig, out: str | os.PathLike, run_id: str | None = None) -> Path:
    """Create (or check) the run folder; refuse a folder holding a run with a different config."""
    run_id = run_id or config.run_id
    folder = Path(out) / run_id
    new = {**config.to_dict(), "run_id": run_id}
    if runs.is_run_folder(folder):
        old = runs.read_json(folder / "config.json")
        differ = _config_diff(old, new)
        if differ:
            raise ValueError(
                f"{folder} holds run {run_id!r} with a different config ({'; '.join(differ)}); "
                "use another --out or --run-id, or the same config to resume"
            )
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_json(folder / "config.json", {**new, "versions": versions()})
    except PermissionError:
        raise PermissionError(f"cannot write to {folder}: choose a writable --out folder") from None
    except OSError as err:
        raise ValueError(f"cannot create run folder {folder} ({err.strerror}); choose a writable --out") from None
    return folder


# ------------------------------------------------------------------------------ the loop
def train(config: TrainConfig, out: str | os.PathLike = "runs", *, run_id: str | None = None) -> RunResult:
    """Train one run into `out/<run_id>/`, resuming it when it was cut; a finished run is returned as is."""
    from resviz.probes import Recorder  # the recorder's module imports models; keep import order simple

    config.validate()
    device = datasets.resolve_device(config.device)
    sync_check = _SyncCheck(device)  # checks $RESVIZ_SYNC_DEBUG before anything is written
    folder = Path(out) / (run_id or config.run_id)
    if runs.is_run_folder(folder):
        prepare_folder(config, out, folder.name)  # refuses a different config, naming the fields
        status = runs.read_status(folder)
        if status.get("status") in runs.FINISHED and (folder / "metrics.parquet").is_file():
            return _result_from_folder(folder, status)

    data = datasets.load(config.dataset, root=config.root)
    train_images, train_labels = data.train_images, data.train_labels
    if config.train_subset is not None:
        train_images, train_labels = train_images[: config.train_subset], train_labels[: config.train_subset]
    if config.batch_size > len(train_images):
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set ({len(train_images)} images); "
            f"use --batch-size {len(train_images)} or less"
        )
    folder = prepare_folder(config, out, folder.name)
    run_id = folder.name

    torch.manual_seed(config.seed)
    model = cifar_resnet(config.depth, plain=config.arch == "plain", shortcut=config.shortcut, norm=config.norm,
                         branch_init=config.branch_init, width=config.width, num_classes=len(data.classes))
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    stream = BatchStream(train_images, train_labels, config, data.mean, data.std, device)

    # --- resume
    start, seconds, warmup_until = 0, 0.0, (config.warmup_steps if config.warmup_enabled else None)
    metrics_rows: list[dict] = []
    stats_frames: list[pd.DataFrame] = []
    ckpt_path = folder / "checkpoint.pt"
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - a checkpoint that cannot be read is a failure we name
            raise ValueError(f"checkpoint {ckpt_path} cannot be read ({err}); delete it to restart the run") from None
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, seconds, warmup_until = ckpt["step"], ckpt["seconds"], ckpt["warmup_until"]
        if (folder / "metrics.parquet").is_file():
            m = pd.read_parquet(folder / "metrics.parquet")
            metrics_rows = m[m["step"] <= start].to_dict("records")
        if (folder / "stats.parquet").is_file():
            s = pd.read_parquet(folder / "stats.parquet")
            stats_frames = [s[s["step"] < start]]

    train_model = compile_model(model, config.compile_mode) if config.compile else model
    unproven = {True, False} if train_model is not model else set()  # compiled graphs (recording or not) not run yet
    cudagraphs = config.compile and config.compile_mode in CUDAGRAPH_MODES and device.type == "cuda"
    model.train()
    run_info = {"run_id": run_id, "seed": config.seed}
    rec = Recorder(model, every=config.record_every, metrics=config.record_metrics, run_info=run_info)

    loss_sum = torch.zeros((), device=device)
    wrong_sum = torch.zeros((), device=device)
    interval_images, t_interval = 0, time.perf_counter()
    last_test = (float("nan"), float("nan"))
    last_finite: dict = metrics_rows[-1] if metrics_rows else {}
    bar = _progress(config, start, run_id)

    def save(step: int) -> None:
        stats_frames.append(rec.drain())
        stats = schema.concat(stats_frames)
        stats_frames[:] = [stats]
        runs.atomic_write_parquet(folder / "stats.parquet", stats)
        runs.atomic_write_parquet(folder / "metrics.parquet", _metrics_frame(metrics_rows))
        runs.atomic_torch_save(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                           "step": step, "seconds": seconds, "warmup_until": warmup_until,
                                           "mean": tuple(data.mean), "std": tuple(data.std),
                                           "classes": list(data.classes), "config": config.to_dict()})

    step = completed = start
    phase = "training"
    cudnn_was = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark  # restored in `finally`
    try:
        runs.write_status(folder, "running", step=start, pid=os.getpid())
        with rec, sync_check:  # sync_check leaves first: the Recorder's closing flush syncs
            rec.begin_step(start)
            for step in range(start, config.steps):
                # no host sync from here to the next boundary (RESVIZ_SYNC_DEBUG=error checks it on CUDA)
                lr = learning_rate(config, step, warmup_until)  # a Python float: no device tensor involved
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = stream.batch(step)
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are consumed
                if rec.recording in unproven:  # the first call of a compiled graph: guard it
                    logits, loss, train_model = _guarded_step(train_model, model, rec, step, x, y, amp=config.amp,
                                                              device=device)
                    unproven = unproven - {rec.recording} if train_model is not model else set()
                else:
                    logits, loss = forward_backward(train_model, x, y, amp=config.amp, device=device)
                rec.end_step(step, epoch=stream.epoch_of(step))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                completed = step + 1
                loss_sum += loss.detach() * len(y)
                wrong_sum += (logits.detach().argmax(1) != y).sum()
                interval_images += len(y)
                bar.update(1)
                done = step + 1
                if done % config.log_every and done != config.steps:
                    continue
                # SYNC: log boundary - read the interval's loss and error back to the host
                sync_check.disarm()
                loss_mean = (loss_sum / interval_images).item()
                train_err = (wrong_sum / interval_images).item()
                now = time.perf_counter()
                seconds += now - t_interval
                images_per_s = interval_images / max(now - t_interval, 1e-9)
                if done % config.eval_every == 0 or done == config.steps:
                    phase = "evaluation"
                    with rec.paused():  # SYNC: evaluation boundary (one host copy at its end)
                        result = evaluate(model, data.test_images, data.test_labels, mean=data.mean,
                                          std=data.std, batch_size=config.eval_batch_size, device=device,
                                          progress=False)
                    last_test = (1.0 - result["accuracy"], result["loss"])
                    phase = "training"
                row = {"run_id": run_id, "step": done, "epoch": stream.epoch_of(done), "loss": loss_mean,
                       "train_error": train_err, "test_error": last_test[0] if done % config.eval_every == 0
                       or done == config.steps else float("nan"),
                       "test_loss": last_test[1] if done % config.eval_every == 0 or done == config.steps
                       else float("nan"), "lr": lr, "seconds": seconds, "images_per_s": images_per_s}
                metrics_rows.append(row)
                bar.set_postfix(loss=f"{loss_mean:.3f}", train_err=f"{train_err:.3f}",
                                test_err=f"{last_test[0]:.3f}", lr=f"{lr:g}", img_s=f"{images_per_s:.0f}")
                if not math.isfinite(loss_mean):
                    save(done)
                    runs.write_status(folder, "diverged", f"loss became {loss_mean} between steps "
                                      f"{done - interval_images // config.batch_size} and {done}",
                                      step=done, last_finite=last_finite)
                    return RunResult(run_id, folder, "diverged", done, train_err, last_test[0], seconds,
                                     reason="non-finite loss", extra={"last_finite": last_finite})
                last_finite = row
                if warmup_until is not None and done < warmup_until and train_err < config.warmup_error:
                    warmup_until = done  # He et al.: 0.01 until training error < 80 %, then 0.1
                loss_sum.zero_()
                wrong_sum.zero_()
                interval_images, t_interval = 0, time.perf_counter()
                if done % config.checkpoint_every == 0 or done == config.steps:
                    save(done)
                    runs.write_status(folder, "running", step=done, pid=os.getpid())
                sync_check.arm()  # end of the boundary
        runs.write_status(folder, "done", step=config.steps, final=last_finite)
        return RunResult(run_id, folder, "done", config.steps, last_finite.get("train_error", float("nan")),
                         last_finite.get("test_error", float("nan")), seconds)
    except KeyboardInterrupt:
        seconds += time.perf_counter() - t_interval
        save(completed)  # the interval in progress is logged short after the resume; no step is lost
        runs.write_status(folder, "interrupted", "interrupted by the user (Ctrl-C); run again to resume",
                          step=completed)
        raise
    except torch.cuda.OutOfMemoryError:
        pass  # handled below, once this handler has let go of the failed step's tensors
    except Exception as err:
        runs.write_status(folder, "failed", f"{type(err).__name__}: {err}", step=step)
        raise
    finally:
        sync_check.disarm()
        torch.backends.cudnn.benchmark = cudnn_was
        bar.close()
    # only an out-of-GPU-memory error gets here: every other path through the loop returns or raises
    x = y = logits = loss = train_model = None  # noqa: F841 - drop the failed step's tensors before probing
    if phase == "evaluation":
        reason = (f"out of GPU memory evaluating depth={config.depth} at eval_batch_size={config.eval_batch_size}; "
                  f"use a smaller --eval-batch-size, e.g. {max(1, config.eval_batch_size // 4)}")
    else:
        fits = largest_batch(model, config.batch_size, amp=config.amp, channels_last=config.channels_last,
                             device=device)
        fix = (f"the largest batch that fits is {fits}; use --batch-size {fits}" if fits else
               "not even batch_size=1 fits; use a smaller --depth or --width, or a larger GPU")
        reason = (f"out of GPU memory for depth={config.depth} at batch_size={config.batch_size} "
                  f"({torch.cuda.get_device_name(device)}): {fix}")
    runs.write_status(folder, "failed", reason, step=step)
    raise RuntimeError(reason)


def _metrics_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return schema.empty_train()
    return schema.coerce_train(pd.DataFrame(rows, columns=list(schema.TRAIN_COLUMNS)))


def _progress(config: TrainConfig, start: int, run_id: str):
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, desc=run_id, unit="step", disable=not config.progress,
                dynamic_ncols=True, file=sys.stderr, leave=True)


def _result_from_folder(folder: Path, status: dict) -> RunResult:
    final = status.get("final") or status.get("last_finite") or {}
    return RunResult(folder.name, folder, status["status"], int(status.get("step", 0)),
                     float(final.get("train_error", float("nan"))), float(final.get("test_error", float("nan"))),
                     float(final.get("seconds", float("nan"))), status.get("reason", ""))
