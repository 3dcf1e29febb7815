"""Speed switches of the training step and their guards: the forward/backward pass (bf16 autocast), torch.compile
with its fallback to eager, CUDA-graph step marks, cuDNN autotuning, the sync-debug check between sync
boundaries, and the out-of-memory probe for the largest batch that fits. channels_last is the loader's
(`DeviceLoader(channels_last=...)`) and the model's memory format."""
from __future__ import annotations

import contextlib
import os
import warnings

import torch
import torch.nn.functional as F

from resviz import datasets
from resviz.errors import UserError, first_line

CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # modes that replay CUDA graphs on CUDA
COMPILE_BACKEND_ENV = "RESVIZ_COMPILE_BACKEND"  # torch.compile backend (default inductor); tests use aot_eager
SYNC_DEBUG_ENV = "RESVIZ_SYNC_DEBUG"  # "warn" | "error": torch.cuda.set_sync_debug_mode between sync boundaries


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


def compile_model(model: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """`torch.compile(model, mode=mode)` with the backend named by $RESVIZ_COMPILE_BACKEND (default inductor; the
    mode applies to inductor only). Compiling is lazy: a missing compiler shows at the first call, which
    `TrainStep` guards. Where torch.compile itself refuses, warn and return the eager model."""
    backend = os.environ.get(COMPILE_BACKEND_ENV, "") or "inductor"
    try:
        if backend == "inductor":
            return torch.compile(model, mode=None if mode == "default" else mode)
        return torch.compile(model, backend=backend)
    except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
        warnings.warn(f"torch.compile is not available here ({first_line(err, with_type=True)}); training eager",
                      stacklevel=2)
        return model


class TrainStep:
    """forward_backward through the eager or compiled model. The first call of each compiled graph (recording
    or not) is guarded: a compiler that fails there (no working C++ compiler for inductor, say) gives a
    one-line warning, the failed attempt is undone and the run goes on eager. With CUDA graphs, each step
    first marks the last replay's outputs consumed."""

    def __init__(self, model: torch.nn.Module, *, compile: bool, mode: str, amp: bool, device: torch.device):
        self.model = model
        self.call = compile_model(model, mode) if compile else model
        self.unproven = {True, False} if self.call is not model else set()  # compiled graphs not run yet
        self.cudagraphs = compile and mode in CUDAGRAPH_MODES and device.type == "cuda"
        self.amp = amp
        self.device = device

    def __call__(self, rec, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are consumed
        if rec.recording not in self.unproven:
            return forward_backward(self.call, x, y, amp=self.amp, device=self.device)
        logits, loss = self._guarded(rec, step, x, y)
        self.unproven = self.unproven - {rec.recording} if self.call is not self.model else set()
        return logits, loss

    def _guarded(self, rec, step: int, x, y):
        """The first call of a compiled graph, where a compiler failure surfaces (forward: tracing and code
        generation; backward: its lazy compile). On failure, warn in one line, undo what the failed attempt
        changed (BatchNorm buffers, gradients, the Recorder's step) and redo the step eager."""
        model = self.model
        saved = [b.detach().clone() for b in model.buffers()]  # a forward before a failed backward moved these
        try:
            return forward_backward(self.call, x, y, amp=self.amp, device=self.device)
        except (KeyboardInterrupt, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - a compiler that does not work here: train eager
            warnings.warn(f"torch.compile failed at its first step ({first_line(err, with_type=True)}); "
                          "training eager instead", stacklevel=4)
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)
        model.zero_grad(set_to_none=True)
        rec.begin_step(step)  # forget what the failed attempt's hooks wrote
        self.call = model
        return forward_backward(model, x, y, amp=self.amp, device=self.device)


class SyncCheck:
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

    def __enter__(self) -> "SyncCheck":
        return self

    def __exit__(self, *exc) -> None:
        self.disarm()


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device, on: bool):
    """torch.backends.cudnn.benchmark = `on` on CUDA inside the block; the previous value is restored after."""
    was = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = was


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


def activation_bytes(depth: int, width: int, batch_size: int) -> int:
    """A lower bound of the memory a training step of a CIFAR net (6n+2) holds for backward: two fp32 tensors of
    each conv layer's output (32x32 x width, 16x16 x 2 width, 8x8 x 4 width per stage), plus the weights with
    their gradients and momentum."""
    n = (depth - 2) // 6
    per_image = 2 * n * (1024 + 512 + 256) * width * 2 * 4  # 2 convs a block, 2 tensors a conv, 4 bytes
    weights = 2 * n * 9 * (width**2 + (2 * width) ** 2 + (4 * width) ** 2) * 3 * 4  # weights, grads, momentum
    return batch_size * per_image + weights


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a run on `device`: CUDA's free memory; on the CPU the smaller of MemAvailable and the
    cgroup's limit (a container). None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            found += [int(text) for text in [f.read().strip()] if text.isdigit()]
    except OSError:
        pass
    return min(found) if found else None


def check_fits(depth: int, width: int, batch_size: int, device: torch.device) -> None:
    """Refuse, before the model is built, a depth, width and batch whose training step cannot fit in memory
    (by a lower bound of what it holds): one line with the numbers and the fix."""
    need, have = activation_bytes(depth, width, batch_size), available_bytes(device)
    if have is None or need <= have:
        return
    raise UserError(f"depth={depth}, width={width} at batch_size={batch_size} needs at least {need / 2**30:.1f} GiB "
                    f"to train but {device} has {have / 2**30:.1f} GiB free; use a smaller --depth, --width or "
                    "--batch-size")
