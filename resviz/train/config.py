"""One training run's configuration: `TrainConfig`, its checks, its run id, and the one place where values
from JSON/YAML files (`TrainConfig.from_dict`) and command-line text (`TrainConfig.from_text`) become typed
fields."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from resviz import schema
from resviz.io import safe_name
from resviz.models import check_depth, cifar_resnet
from resviz.train.recipe import PARAM_GROUPS

PAPER_STEPS = 64_000  # He et al.: 64k iterations at batch 128 ...
PAPER_MILESTONES = (32_000, 48_000)  # ... lr / 10 at 32k and 48k
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LIST_FIELDS = ("milestones", "record_metrics")  # tuples; comma-separated on the command line
OPTIONAL_FIELDS = ("branch_init", "train_subset")  # may be None; "none" (or "") on the command line
MAX_SEED = 2**32 - 1  # seeds the batch generators as seed * 1_000_003 + step terms: stays inside int64
MAX_INT = 2**40  # counts of steps and images: far beyond any run, far from the int64 they become
POSITIVE_INT_FIELDS = ("steps", "batch_size", "record_every", "log_every", "eval_every", "checkpoint_every",
                       "eval_batch_size", "schedule_steps")


def dataset_slug(spec: str) -> str:
    """A dataset spec as it appears in run ids and folder names: "digits", "cifar10", or "if-<folder name>"
    for "imagefolder:PATH"."""
    if spec.startswith("imagefolder:"):
        return "if-" + safe_name(Path(spec.split(":", 1)[1]).name)  # a 300-character folder name: cut, hashed
    return spec


def absolute_dataset(spec):
    """`spec` with an image folder's path made absolute against this process's working directory (a Ray
    worker would resolve a relative one where `ray start` ran); any other spec as it is."""
    if not isinstance(spec, str) or not spec.startswith("imagefolder:") or spec == "imagefolder:":
        return spec
    return "imagefolder:" + os.path.abspath(spec.split(":", 1)[1])


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
    param_groups: str = "auto"  # "auto": Fixup nets get their official groups (biases, scales at lr/10), others one
    mixup_alpha: float = 0.0  # mixup's Beta(α, α); 0: none (Fixup's official trainer uses 1.0); train/recipe.py
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
        for name in POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
            if value > MAX_INT:
                raise ValueError(f"--{name.replace('_', '-')}={value} is too large; use at most {MAX_INT:,}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed={self.seed!r} must be an integer from 0 to {MAX_SEED:,}")
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} must be a multiple of log_every={self.log_every}"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r} is unknown; use one of: {', '.join(COMPILE_MODES)}")
        if self.param_groups not in PARAM_GROUPS:
            raise ValueError(f"param_groups={self.param_groups!r} is unknown; use one of: {', '.join(PARAM_GROUPS)}")
        if self.warmup not in ("auto", "on", "off"):
            raise ValueError(f"warmup={self.warmup!r} is unknown; use 'auto', 'on' or 'off'")
        self._validate_numbers()
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset={self.train_subset!r} must be a positive number of images or None")
        return self

    def _validate_numbers(self) -> None:
        """The optimiser's numbers and the metric list: finite, in range, known (before any file is written)."""
        checks = (("lr", self.lr > 0, "a positive number, e.g. 0.1"),
                  ("momentum", 0 <= self.momentum < 1, "in [0, 1), e.g. 0.9"),
                  ("weight_decay", self.weight_decay >= 0, "zero or positive, e.g. 1e-4"),
                  ("mixup_alpha", self.mixup_alpha >= 0, "zero (no mixup) or positive, e.g. 1.0"),
                  ("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1], e.g. 0.1"),
                  ("warmup_lr", self.warmup_lr > 0, "a positive number, e.g. 0.01"),
                  ("warmup_error", 0 < self.warmup_error <= 1, "a fraction in (0, 1], e.g. 0.8"))
        for name, ok, want in checks:
            value = getattr(self, name)
            if not (math.isfinite(value) and ok):
                raise ValueError(f"--{name.replace('_', '-')}={value!r} must be {want}")
        if any(m < 0 for m in self.milestones):
            raise ValueError(f"--milestones={list(self.milestones)} must be zero or positive iterations")
        if self.record_metrics is not None:
            bad = [m for m in self.record_metrics if m not in schema.RECORDER_METRICS]
            if bad:
                raise ValueError(f"--record-metrics: unknown metric(s) {bad}; valid: {', '.join(schema.RECORDER_METRICS)}")

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
        parts = [dataset_slug(self.dataset), f"{self.arch}{self.depth}", self.norm]
        if self.arch == "resnet":
            parts.append(f"sc{self.shortcut}")
        if self.branch_init:
            parts.append(self.branch_init)
        if self.width != 16:
            parts.append(f"w{self.width}")
        if self.mixup_alpha:
            parts.append(f"mixup{self.mixup_alpha:g}")
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["record_metrics"] = list(self.record_metrics) if self.record_metrics is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from typed values (a JSON or YAML mapping); unknown keys and wrong types are refused by name."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(known)}")
        return cls(**{k: _typed(k, v, getattr(cls, k)) for k, v in d.items()})

    @classmethod
    def from_text(cls, texts: dict[str, str], base: dict | None = None) -> "TrainConfig":
        """A config from command-line text (`{"steps": "100", "milestones": "50,75"}`) laid over `base` typed
        values (e.g. a config file's); lists are comma-separated, optional fields take "none"."""
        values = dict(base or {})
        cls.from_dict(values)  # the base's unknown keys and wrong types are refused first, by name
        for name, text in texts.items():
            values[name] = _parse(name, text, getattr(cls, name))
        return cls.from_dict(values)


def _typed(key: str, v, default):
    """`v` checked (and widened: 3 -> 3.0, 3.0 -> 3) against the type of the field's default."""
    if key in LIST_FIELDS and v is not None:
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"config key {key!r} must be a list, got {v!r}")
        return tuple(int(x) for x in v) if key == "milestones" else tuple(str(x) for x in v)
    if key in OPTIONAL_FIELDS and v is None:
        return v
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise ValueError(f"config key {key!r} must be true or false, got {v!r}")
    elif isinstance(default, int):
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ValueError(f"config key {key!r} must be an integer, got {v!r}")
        return int(v)
    elif isinstance(default, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"config key {key!r} must be a number, got {v!r}")
        return float(v)
    elif isinstance(default, str) and not isinstance(v, str):
        raise ValueError(f"config key {key!r} must be a string, got {v!r}")
    return v


def _parse(name: str, text, default):
    """A field's value from its command-line text (booleans come from argparse already typed)."""
    if name in LIST_FIELDS:
        items = [v.strip() for v in text.split(",") if v.strip()]
        return [parse_number(v, int, name) for v in items] if name == "milestones" else items
    if name in OPTIONAL_FIELDS and text in ("", "none", "None"):
        return None
    if isinstance(default, bool) or isinstance(text, bool):
        return text
    if name == "train_subset" or isinstance(default, int):
        return parse_number(text, int, name)
    if isinstance(default, float):
        return parse_number(text, float, name)
    return text


def parse_number(text: str, kind: type, name: str):
    """int(text) or float(text), or a ValueError naming the flag: "--steps='ten' must be an integer"."""
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"--{name.replace('_', '-')}={text!r} must be {what}") from None
