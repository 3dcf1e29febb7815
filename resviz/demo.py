"""`resviz demo`: plain vs residual nets, shallow vs deep, on the built-in digits, on the CPU, in minutes.

What it shows (and what it cannot): digits are easy, so every net ends near zero test error given enough
steps; the degradation problem shows up as *slower training* of the deep plain net at equal steps and
learning rate, and as its larger response std (He et al. Fig. 7's direction), not as the 60 % training
error of plain-110 on CIFAR-10. The full CIFAR-10 version is `resviz sweep` on a GPU (README).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from resviz import runs
from resviz.report import write_report
from resviz.sweeps import format_summary, grid, run_sweep, side_by_side_workers
from resviz.train import TrainConfig

# Fair comparison: the same data, steps, batch, learning-rate schedule (with the paper's warm-up for every
# net, so the deep plain net is not simply blown up by lr 0.1) and width for all four nets.
DEMO = TrainConfig(
    dataset="digits", width=8, steps=400, batch_size=64, lr=0.1, warmup="on", warmup_steps=40,
    log_every=20, eval_every=40, checkpoint_every=40, record_every=10, eval_batch_size=360, device="cpu",
)
DEMO_DEPTHS = (8, 44)
SMOKE = dataclasses.replace(DEMO, steps=20, log_every=10, eval_every=10, checkpoint_every=20, record_every=5)
SMOKE_DEPTHS = (8, 14)


def demo_configs(smoke: bool = False, root: str = "data") -> list[TrainConfig]:
    base = dataclasses.replace(SMOKE if smoke else DEMO, root=root)
    return grid(base, depths=SMOKE_DEPTHS if smoke else DEMO_DEPTHS, archs=("plain", "resnet"))


DEMO_OUT = "runs/demo"
SMOKE_OUT = "runs/demo-smoke"  # never the real demo's folder: its runs would clash with the 400-step ones
NEXT_STEPS = "next: open {index} in a browser (depth and step sliders, no Jupyter needed), or `jupyter lab notebooks/`"


def trained_only(runset, ids):
    """The runs of `runset` among `ids` that finished (status done): a run that could not be trained, or one
    of another sweep in the same folder, never reaches a figure."""
    done = set(map(str, ids)) & set(runset.status.loc[runset.status["status"].astype(str) == "done", "run_id"])

    def keep(frame):
        return frame[frame["run_id"].astype(str).isin(done).to_numpy()] if len(frame) else frame

    return dataclasses.replace(runset, metrics=keep(runset.metrics), stats=keep(runset.stats),
                               status=keep(runset.status))


def png_note(note: str) -> str:
    """The report's "PNGs not written" line (it ends in the exact `resviz report` command that writes them once a
    browser is installed), saying that the command trains nothing again."""
    return f"{note} (nothing is trained again)" if note else note


def run_demo(out: str | Path | None = None, *, smoke: bool = False, root: str = "data",
             report: str | Path | None = None, formats=None, progress: bool = True) -> dict:
    """Train the four demo nets into `out` (default runs/demo, or runs/demo-smoke), then write their report
    page (`resviz.report`) to `report` (default OUT/report). Returns what was written.

    `formats=None` adds a PNG of each figure when a browser is found and says in `note` why not
    otherwise; formats named explicitly (e.g. ("png",)) must be made: BrowserNotFoundError otherwise.
    """
    out = Path(out if out is not None else (SMOKE_OUT if smoke else DEMO_OUT))
    configs = demo_configs(smoke, root)
    table = run_sweep(configs, out, workers=1 if smoke else side_by_side_workers(), progress=progress)
    runset = trained_only(runs.load(out), [c.run_id for c in configs])
    if len(runset) == 0:
        raise ValueError(f"no demo run finished in {out}; see the table above for each run's reason")
    # PNG only unless asked: each static format costs a browser render per figure, and `make demo` has 5 minutes
    report_dir = Path(report) if report else out / "report"
    rep = write_report(runset, report_dir, static=formats, auto_static=("png",), runs_named=str(out))
    text = format_summary(table)
    note = png_note(rep.static_note)
    return {"summary": table, "report": rep.index, "figures": rep.files, "note": note, "text": text,
            "next": NEXT_STEPS.format(index=rep.index)}
