"""The training loop: He et al.'s CIFAR recipe with the Recorder inside, checkpoints, resume, divergence.

Host synchronisation happens only at the boundaries marked `# SYNC`: every `log_every` steps (loss and
training error read back, divergence and warm-up checked), at evaluation and at checkpoints. On CUDA,
RESVIZ_SYNC_DEBUG=error runs the steps between boundaries (after the first interval, which compiles and
autotunes) under `torch.cuda.set_sync_debug_mode("error")`, so a hidden sync raises. The speed switches
(channels_last, amp, cudnn_benchmark, compile, compile_mode) and their guards live in `speed.py`; out of GPU
memory, the run is marked failed with the largest batch that fits (halving probe).
Batches are a pure function of (seed, step) (`resviz.loader.DeviceLoader.batch`), so a resumed run sees
exactly the batches an uninterrupted one would. One run spread over N processes (`resviz train --nproc N`) goes
through the same code; what a rank does differently is `ranks.Ranks`' (each method one process's own act when
there is one rank).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from resviz import datasets, schema
from resviz.errors import Interrupted, UserError, os_error_line
from resviz.evaluate import evaluate
from resviz.loader import DeviceLoader
from resviz.measure import (
    CALIBRATION_BATCHES,
    CLEAN_TRAIN_IMAGES,
    HELDOUT_IMAGES,
    clean_train_error,
    fixed_subset,
    heldout_response_std,
)
from resviz.models import cifar_resnet
from resviz.modes import train_mode
from resviz.probes import Recorder
from resviz.runfolder import RunFolder, check_run_id, is_run_folder, read_status
from resviz.train import folder as run_folder
from resviz.train.config import TrainConfig
from resviz.train.folder import Progress, RunResult
from resviz.train.interrupts import StopNow, StopSignals, describe
from resviz.train.ranks import NullFolder, Ranks
from resviz.train.recipe import groups_rule, mixup_batch, param_groups, soft_wrong
from resviz.train.speed import SyncCheck, TrainStep, check_fits, cudnn_benchmark, largest_batch


def learning_rate(config: TrainConfig, step: int, warmup_until: int | None) -> float:
    """Learning rate for iteration `step` (0-based): warm-up, then step decay at the scaled milestones."""
    if warmup_until is not None and step < warmup_until:
        return config.warmup_lr
    drops = sum(step >= m for m in config.scaled_milestones)
    return config.lr * config.lr_decay**drops


@dataclass
class _Run:
    """What the loop works on: the run's pieces and its progress."""

    config: TrainConfig
    folder: Path
    writer: RunFolder | NullFolder  # writes `folder` (rank 0's; the other ranks' writes nothing)
    data: datasets.Dataset
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: DeviceLoader
    progress: Progress
    rec: object = None  # the Recorder
    step_fn: TrainStep | None = None
    step: int = 0  # the step in progress
    step_done: int = 0  # steps completed (a Ctrl-C checkpoint is taken here)
    phase: str = "training"  # or "evaluation": what ran out of memory
    last_test: tuple[float, float] = (float("nan"), float("nan"))  # (test error, test loss)
    last_finite: dict = field(default_factory=dict)  # the last metrics row with a finite loss
    interval: "_Interval" = None
    stop: StopSignals | None = None  # the SIGINT/SIGTERM flag checked between steps
    saved_step: int = 0  # the step of the last checkpoint
    heldout: torch.Tensor | None = None  # fixed test images for Fig. 7 in eval mode (resviz.measure), uint8
    clean: tuple | None = None  # fixed training images and labels for the clean (eval-mode) training error
    eval_stats: list = field(default_factory=list)  # response_std_eval frames measured since the last checkpoint
    ranks: Ranks = field(default_factory=Ranks)  # this process's place among those training the run (one: alone)


class _Interval:
    """Loss and errors summed on the device over one logging interval; read back at its end (the SYNC)."""

    def __init__(self, device):
        self.loss = torch.zeros((), device=device)
        self.wrong = torch.zeros((), device=device)
        self.restart()

    def add(self, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        self.wrong += soft_wrong(logits, y) if y.ndim == 2 else (logits.detach().argmax(1) != y).sum()
        self.images += len(y)

    def restart(self) -> None:
        self.loss.zero_()
        self.wrong.zero_()
        self.images, self.start = 0, time.perf_counter()

    def state(self) -> dict:
        """The sums so far (host copies, exact) and the interval's seconds so far, for a mid-interval checkpoint."""
        return {"loss": self.loss.cpu(), "wrong": self.wrong.cpu(), "images": self.images,
                "seconds": time.perf_counter() - self.start}

    def restore(self, state: dict | None) -> None:
        if state:
            self.loss.copy_(state["loss"])
            self.wrong.copy_(state["wrong"])
            self.images, self.start = state["images"], time.perf_counter() - state["seconds"]

    def read(self) -> tuple[float, float, float]:
        """(mean loss, training error, seconds) of the interval. SYNC."""
        return ((self.loss / self.images).item(), (self.wrong / self.images).item(),
                time.perf_counter() - self.start)


def train(config: TrainConfig, out: str | os.PathLike = "runs", *, run_id: str | None = None,
          ranks: Ranks | None = None) -> RunResult:
    """Train one run into `out/<run_id>/`, resuming it when it was cut; a finished run is returned as is.

    The run folder is locked for the run's life (`runfolder.run_lock`: a second writer is refused by name).
    SIGINT and SIGTERM stop the run at the next step boundary: it is saved there, marked interrupted, and
    `resviz.errors.Interrupted` (a KeyboardInterrupt) is raised; running it again continues exactly.
    `ranks`: this process's place among several that train the run together (`resviz train --nproc N`,
    `ranks.Ranks.from_environment()` under torchrun); None: one process."""
    config.validate()
    ranks = ranks or Ranks()
    run_id = check_run_id(config.run_id if run_id is None else run_id, out)  # a name inside `out`
    device = ranks.device(datasets.resolve_device(config.device))
    check_fits(config.depth, config.width, config.batch_size, device)  # before building or writing anything
    sync_check = SyncCheck(device)  # checks $RESVIZ_SYNC_DEBUG before anything is written
    ranks.start(device)
    config = config if ranks.writes else dataclasses.replace(config, progress=False)  # one progress bar
    folder = Path(out) / run_id
    finished = ranks.first(lambda: run_folder.finished_result(config, folder))
    if finished is not None:
        return finished
    data = ranks.in_turn(lambda: datasets.load(config.dataset, root=config.root, progress=config.progress))
    images, labels = _training_split(config, data)
    with ranks.lock(out, folder), StopSignals() as stop:
        # a signal stops at once: nothing in memory to save yet (several ranks: at the first log boundary, where
        # they agree, as later; one rank stopping alone would leave the others waiting in a collective)
        stop.phase = "boundary" if ranks.many else "setup"
        try:
            # the very folder locked above; another process may have finished it meanwhile
            folder, finished = ranks.first(lambda: _prepared(config, out, run_id))
            if finished is not None:
                return finished
            run = _setup(config, folder, data, images, labels, device, ranks)
        except StopNow as err:
            raise _stopped_in_setup(folder, stop, err, ranks.writes) from None
        run.stop, stop.phase = stop, "boundary"
        return _train_locked(run, sync_check)


def _prepared(config: TrainConfig, out, run_id: str) -> tuple[Path, RunResult | None]:
    """The run folder, created or checked to hold this config, and its result if it is finished."""
    folder = run_folder.prepare_folder(config, out, run_id)
    return folder, run_folder.finished_result(config, folder)


def _stopped_in_setup(folder: Path, stop: StopSignals, err: StopNow, writes: bool) -> Interrupted:
    """A signal while setting up: nothing trained, nothing lost; the folder says interrupted at its last step."""
    stop.acted()
    step = int(read_status(folder).get("step", 0) or 0) if is_run_folder(folder) else 0
    reason = f"{err}; run the same command again to resume from step {step}"
    if is_run_folder(folder) and writes:
        _write_status_if_possible(RunFolder(folder.parent, folder.name), "interrupted", reason, step)
    return Interrupted(err.signum, f"{folder.name}: {reason}")


def _train_locked(run: "_Run", sync_check: SyncCheck) -> RunResult:
    """The steps of a set-up run, its status kept true whatever happens (an error, a signal, OOM)."""
    config, folder = run.config, run.folder
    bar = _progress_bar(config, run.progress.step, folder.name)
    try:
        with cudnn_benchmark(run.device, config.cudnn_benchmark), bar, sync_check:
            run.writer.write_status("running", step=run.progress.step, pid=os.getpid(),
                                    **({"ranks": run.ranks.size} if run.ranks.many else {}))
            return _run_steps(run, bar, sync_check)
    except StopNow as err:  # a second signal, or a step that outlasted the grace: the last checkpoint is the
        run.stop.acted()     # consistent state to resume from
        reason = f"{err} (at step {run.step}); run the same command again to resume from step {run.saved_step}"
        _write_status_if_possible(run.writer, "interrupted", reason, run.saved_step)
        raise Interrupted(err.signum, f"{folder.name}: {reason}") from None
    except Interrupted:
        raise  # saved at a step boundary already
    except KeyboardInterrupt:  # a Ctrl-C outside StopSignals' handlers: the last checkpoint is the consistent state
        _write_status_if_possible(run.writer, "interrupted", "stopped at once; run again to resume from step "
                                  f"{run.saved_step}", run.saved_step)
        raise
    except torch.cuda.OutOfMemoryError:
        pass  # handled below, once this handler has let go of the failed step's tensors
    except OSError as err:
        if os_error_line(err) is None:
            _write_status_if_possible(run.writer, "failed", f"{type(err).__name__}: {err}", run.step)
            raise
        raise _disk_error(run, err) from None
    except Exception as err:
        _write_status_if_possible(run.writer, "failed", f"{type(err).__name__}: {err}", run.step)
        raise
    # only an out-of-GPU-memory error gets here: every other path through the loop returns or raises
    raise _out_of_memory(run)


def _write_status_if_possible(writer: RunFolder | NullFolder, status: str, reason: str, step: int) -> None:
    """The run's status at `step`; where even status.json cannot be written (a full disk) the status left says
    `running` with this process's pid, which reads `interrupted` once it has exited."""
    try:
        writer.write_status(status, reason, step=step)
    except OSError:
        pass


def _disk_error(run: "_Run", err: OSError) -> UserError:
    """A full disk, a read-only folder or a long name while saving: the files of the last checkpoint are whole
    (atomic writes), the run is marked failed, and the line names the file and the fix."""
    line = f"{run.folder.name}: {os_error_line(err)}: the run resumes from its checkpoint at step {run.saved_step}"
    _write_status_if_possible(run.writer, "failed", line, run.saved_step)
    return UserError(line)


def _interrupted(run: "_Run", signum: int) -> Interrupted:
    """Save the run at the boundary before step `run.step_done` (with the logging interval in progress, so the
    resumed run logs exactly the rows an uninterrupted one would) and mark it interrupted."""
    run.stop.acted()  # no abandoning while saving (a second signal still stops at once)
    run.progress.interval = run.interval.state()
    _checkpoint(run, run.step_done)
    how = describe(signum)
    run.writer.write_status("interrupted", f"interrupted by {how} at step {run.step_done}; run the same "
                            "command again to resume", step=run.step_done, signal=signum)
    return Interrupted(signum, f"{run.folder.name}: interrupted by {how} at step {run.step_done}, saved")


def _training_split(config: TrainConfig, data) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = data.train_images, data.train_labels
    if len(data.classes) < 2:  # every label the same: training error 0 % from the first step, a wrong result
        raise ValueError(f"{config.dataset} holds {len(data.classes)} class ({', '.join(data.classes)}); a "
                         "classifier needs at least 2: add a folder per class to train/ and test/")
    if config.train_subset is not None:
        images, labels = images[: config.train_subset], labels[: config.train_subset]
    if config.batch_size > len(images):
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set ({len(images)} images); "
            f"use --batch-size {len(images)} or less"
        )
    return images, labels


def _setup(config: TrainConfig, folder: Path, data, images, labels, device, ranks: Ranks) -> _Run:
    """The model (seeded), its optimiser, the loader and the Recorder, resumed from the folder's checkpoint."""
    torch.manual_seed(config.seed)
    model = cifar_resnet(config.depth, plain=config.arch == "plain", shortcut=config.shortcut, norm=config.norm,
                         branch_init=config.branch_init, width=config.width, num_classes=len(data.classes))
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = param_groups(model, groups_rule(config.param_groups, config.branch_init))  # train/recipe.py
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    loader = DeviceLoader(images, labels, batch_size=config.batch_size, train=True, mean=data.mean, std=data.std,
                          device=device, seed=config.seed, augment=config.augment,
                          channels_last=config.channels_last)
    progress = run_folder.resume(folder, config, model, optimizer, device, datasets.fingerprint(images, labels))
    writer = RunFolder(folder.parent, folder.name) if ranks.writes else NullFolder()
    run = _Run(config, folder, writer, data, device, model, optimizer, loader,
               progress, step=progress.step, step_done=progress.step,
               last_finite=progress.metrics[-1] if progress.metrics else {}, interval=_Interval(device),
               saved_step=progress.step, ranks=ranks)
    tested = [r for r in progress.metrics if math.isfinite(r.get("test_error", math.nan))]
    if tested:  # shown in the progress line until the next evaluation
        run.last_test = (tested[-1]["test_error"], tested[-1]["test_loss"])
    run.interval.restore(progress.interval if ranks.writes else None)  # sums over the ranks: counted once
    progress.interval = None
    run.step_fn = TrainStep(ranks.wrap(model, device), compile=config.compile, mode=config.compile_mode, amp=config.amp,
                            device=device)
    run.rec = Recorder(model, every=config.record_every, metrics=config.record_metrics,
                       run_info={"run_id": folder.name, "seed": config.seed})
    run.heldout = data.test_images[fixed_subset(len(data.test_images), HELDOUT_IMAGES)]
    picked = fixed_subset(len(images), CLEAN_TRAIN_IMAGES)
    run.clean = (images[picked], labels[picked])
    measured_at_init = bool(len(progress.stats)) and (progress.stats["metric"] == "response_std_eval").any()
    if progress.step == 0 and not measured_at_init:  # the value at initialisation, measured (not assumed 1.0),
        run.eval_stats.append(_heldout_stats(run, 0))  # once: a run cut before its first step resumes at 0
    return run


def _heldout_stats(run: _Run, done: int):
    """Fig. 7 as the paper measures it: eval mode, running statistics, the fixed held-out test images. At step 0
    the running statistics were never estimated: a copy of the net is measured with them set from the first
    training batches (`measure.CALIBRATION_BATCHES`; batches are a pure function of (seed, step), so drawing them
    changes nothing of the training stream)."""
    calibrate = None
    if done == 0:
        calibrate = torch.cat([run.loader.batch(k)[0] for k in range(min(CALIBRATION_BATCHES, len(run.loader)))])
    return heldout_response_std(run.model, run.heldout, run.data.mean, run.data.std,
                                run_info={"run_id": run.folder.name, "seed": run.config.seed}, step=done,
                                epoch=run.loader.epoch_of(done), calibrate=calibrate)


def _run_steps(run: _Run, bar, sync_check: SyncCheck) -> RunResult:
    """Steps from the resumed one to the end, with a boundary every log_every steps; the run's result."""
    config, rec = run.config, run.rec
    with train_mode(run.model), rec, sync_check:  # sync_check leaves first: the Recorder's closing flush syncs
        rec.begin_step(run.step)
        for step in range(run.step, config.steps):
            signum = run.ranks.stop_signal(run.stop)  # SIGINT/SIGTERM: stop at this boundary (several ranks:
            if signum is not None:                     # at the log boundary where they agreed to)
                raise _interrupted(run, signum)
            # no host sync from here to the next boundary (RESVIZ_SYNC_DEBUG=error checks it on CUDA)
            run.step = step
            run.stop.phase = "step"  # a step that outlasts the grace after a signal may be abandoned
            lr = _train_step(run, step)
            run.stop.phase = "boundary"
            bar.update(1)
            done = step + 1
            if done % config.log_every and done != config.steps:
                continue
            sync_check.disarm()  # SYNC: a log boundary
            run.ranks.combine(run.interval, run.stop.signum)  # several ranks: the sums of all, a stop agreed
            row = _log_row(run, done, lr, bar)
            if not math.isfinite(row["loss"]):
                return _diverged(run, done, row)
            _end_interval(run, done, row)
            sync_check.arm()  # end of the boundary
    run.writer.write_status("done", step=config.steps, final=run.last_finite)
    return RunResult(run.folder.name, run.folder, "done", config.steps,
                     run.last_finite.get("train_error", float("nan")),
                     run.last_finite.get("test_error", float("nan")), run.progress.seconds)


def _train_step(run: _Run, step: int) -> float:
    """One optimiser step at the scheduled learning rate, recorded; no host sync. Returns the learning rate."""
    lr = learning_rate(run.config, step, run.progress.warmup_until)  # a Python float: no device tensor involved
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)  # Fixup's biases and scales: lr / 10 (train/recipe.py)
    x, y = run.loader.batch(step)
    if run.config.mixup_alpha:  # soft targets (B, K): cross-entropy is then mixup's loss
        x, y = mixup_batch(x, y, run.config.mixup_alpha, len(run.data.classes), seed=run.config.seed, step=step)
    x, y = run.ranks.part(x, y)  # several ranks: this one's 1/N of the global batch
    logits, loss = run.step_fn(run.rec, step, x, y)
    run.rec.end_step(step, epoch=run.loader.epoch_of(step))
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step_done = step + 1
    run.interval.add(logits, loss, y)
    return lr


def _due(every: int, done: int, steps: int) -> bool:
    """Whether a periodic event (evaluation, checkpoint) falls at step `done`: every `every` steps and at the end."""
    return done % every == 0 or done == steps


def _log_row(run: _Run, done: int, lr: float, bar) -> dict:
    """The interval's metrics row (with a test evaluation when one is due), appended to the run's rows. SYNC."""
    config = run.config
    images = run.interval.images
    loss_mean, train_err, seconds = run.interval.read()
    run.progress.seconds += seconds
    evaluated = _due(config.eval_every, done, config.steps)
    if evaluated:
        run.phase, run.stop.phase = "evaluation", "step"  # an evaluation may be abandoned as a step may
        run.ranks.share_buffers(run.model)  # several ranks: each evaluates the net rank 0 saves
        with run.rec.paused():  # SYNC: evaluation boundary (one host copy at its end)
            result = evaluate(run.model, run.data.test_images, run.data.test_labels, mean=run.data.mean,
                              std=run.data.std, batch_size=config.eval_batch_size, device=run.device,
                              progress=False)
            clean = clean_train_error(run.model, *run.clean, run.data.mean, run.data.std,
                                      batch_size=config.eval_batch_size)
            run.eval_stats.append(_heldout_stats(run, done))
        run.last_test = (1.0 - result["accuracy"], result["loss"])
        run.phase, run.stop.phase = "training", "boundary"
    row = {"run_id": run.folder.name, "step": done, "epoch": run.loader.epoch_of(done), "loss": loss_mean,
           "train_error": train_err, "test_error": run.last_test[0] if evaluated else float("nan"),
           "test_loss": run.last_test[1] if evaluated else float("nan"), "lr": lr, "seconds": run.progress.seconds,
           "images_per_s": images / max(seconds, 1e-9),
           "clean_train_error": clean if evaluated else float("nan")}
    run.progress.metrics.append(row)
    _show(bar, run.folder.name, done, config.steps, row, run.last_test[0])
    return row


def _diverged(run: _Run, done: int, row: dict) -> RunResult:
    """Save the run with its non-finite row and mark it diverged (a result, not an error)."""
    _checkpoint(run, done)
    first = done - run.interval.images // run.config.batch_size
    run.writer.write_status("diverged", f"loss became {row['loss']} between steps {first} and {done}",
                            step=done, last_finite=run.last_finite)
    return RunResult(run.folder.name, run.folder, "diverged", done, row["train_error"], run.last_test[0],
                     run.progress.seconds, reason="non-finite loss", extra={"last_finite": run.last_finite})


def _end_interval(run: _Run, done: int, row: dict) -> None:
    """After a finite row: end the warm-up once training error is low, restart the sums, checkpoint if due."""
    config, progress = run.config, run.progress
    run.last_finite = row
    if progress.warmup_until is not None and done < progress.warmup_until and row["train_error"] < config.warmup_error:
        progress.warmup_until = done  # He et al.: 0.01 until training error < 80 %, then 0.1
    run.interval.restart()
    if _due(config.checkpoint_every, done, config.steps):
        _checkpoint(run, done)
        run.writer.write_status("running", step=done, pid=os.getpid())


def _checkpoint(run: _Run, step: int) -> None:
    """The statistics recorded so far joined to the saved ones, and everything written at `step`."""
    # rows in step order, within a step the Recorder's before the evaluation's (stable: otherwise as measured),
    # so a run cut and resumed at any boundary writes the very table an uninterrupted one does
    stats = schema.concat([run.progress.stats, run.rec.drain(), *run.eval_stats])
    order = stats["step"].to_numpy() * 2 + (~stats["metric"].isin(schema.RECORDER_METRICS)).to_numpy()
    run.progress.stats = stats.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    run.eval_stats = []
    run_folder.save(run.writer, step, run.progress, run.model, run.optimizer, run.data, run.config)
    run.saved_step = step
    run.progress.interval = None


def _out_of_memory(run: _Run) -> UserError:
    """Mark the run failed with the fix: a smaller eval batch, or the largest training batch that fits."""
    config = run.config
    run.step_fn = None  # drop the compiled graphs (and their memory) before probing
    if run.phase == "evaluation":
        reason = (f"out of GPU memory evaluating depth={config.depth} at eval_batch_size={config.eval_batch_size}; "
                  f"use a smaller --eval-batch-size, e.g. {max(1, config.eval_batch_size // 4)}")
    else:
        if run.ranks.many:  # no probe: on one rank alone it would leave the others waiting in a collective
            fix = (f"each of the {run.ranks.size} GPUs holds {config.batch_size // run.ranks.size}; use a smaller "
                   "--batch-size")
        else:
            fits = largest_batch(run.model, config.batch_size, amp=config.amp, channels_last=config.channels_last,
                                 device=run.device)
            fix = (f"the largest batch that fits is {fits}; use --batch-size {fits}" if fits else
                   "not even batch_size=1 fits; use a smaller --depth or --width, or a larger GPU")
        reason = (f"out of GPU memory for depth={config.depth} at batch_size={config.batch_size} "
                  f"({torch.cuda.get_device_name(run.device)}): {fix}")
    run.writer.write_status("failed", reason, step=run.step)
    return UserError(reason)


def _progress_bar(config: TrainConfig, start: int, run_id: str):
    """A tqdm bar on a terminal; where stderr is a file or a pipe, no bar but one plain line per logged row."""
    tty = sys.stderr.isatty()
    bar = tqdm(total=config.steps, initial=start, desc=run_id, unit="step", disable=not (config.progress and tty),
               dynamic_ncols=True, file=sys.stderr, leave=True)
    bar.plain_lines = config.progress and not tty
    return bar


def _show(bar, run_id: str, done: int, steps: int, row: dict, test_error: float) -> None:
    """The logged row, what matters first (an 80-column bar cuts the end): loss, test and training error, lr,
    speed; the test error is "–" until the first evaluation."""
    test = "–" if math.isnan(test_error) else f"{100 * test_error:.1f}%"
    text = (f"loss {row['loss']:.3f} test {test} train {100 * row['train_error']:.1f}% lr {row['lr']:g} "
            f"{row['images_per_s']:.0f} img/s")
    bar.set_postfix_str(text, refresh=False)
    if getattr(bar, "plain_lines", False):
        print(f"{run_id} step {done}/{steps}: {text}", file=sys.stderr, flush=True)
