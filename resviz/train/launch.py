"""`resviz train --nproc N`: the same command line, without --nproc, run again under
`torchrun --standalone --nproc-per-node N` (torch.distributed.run's main, run by this interpreter), whose N
processes train the run together (`ranks.py`). torchrun is kept quiet but for its errors (a rank that crashed):
its warnings and the traceback it ends with after a rank failed or a signal came would bury the ranks' own
lines (rank 0 says what happened to the run, in one line).

The launching process stays as the user's handle on the run: SIGINT (Ctrl-C) and SIGTERM sent to it are passed
on to torchrun, which passes them to every rank; the ranks agree at their next log boundary to stop there, rank
0 saves the run and marks it interrupted, and the same command resumes it. torchrun runs in its own process
group (a Ctrl-C at the terminal reaches this process only, which passes it on once) and gets SIGTERM should this
process die. The exit status is the single process's: 0 done, 3 diverged (read from the run's status.json),
128 + the signal when interrupted, otherwise torchrun's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from resviz.errors import Interrupted
from resviz.runfolder import read_status
from resviz.train.interrupts import signal_on_parent_death

NPROC_FLAG = "--nproc"
TORCHRUN = """import logging, sys
from torch.distributed.run import main
logging.disable(logging.WARNING)
try:
    main()
except BaseException:
    sys.exit(1)
"""  # torchrun with its warnings and its final traceback left out; its error lines (a rank's exit code) stay


def without_nproc(argv: list[str]) -> list[str]:
    """The command line's words with --nproc and its value taken out (also `--nproc=N` and the abbreviations
    argparse accepts, down to `--np`)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if len(name) >= 4 and NPROC_FLAG.startswith(name):
            skip = "=" not in word
            continue
        out.append(word)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m resviz.cli ARGV` (without --nproc), run by this interpreter."""
    return [sys.executable, "-c", TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "resviz.cli",
            *without_nproc(argv)]


def launch(nproc: int, argv: list[str], folder: Path) -> int:
    """Run `resviz <argv>` (a `train` command line) in `nproc` processes under torchrun, passing SIGINT and
    SIGTERM on; the exit status the one-process command would give, read from `folder`'s status at the end."""
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # the cores shared out
    child = subprocess.Popen(torchrun_command(nproc, argv), env=env, process_group=0,
                             preexec_fn=signal_on_parent_death)
    came = _wait_passing_signals(child)
    status = read_status(folder) if (folder / "status.json").is_file() else {}
    if came or (status.get("status") == "interrupted" and child.returncode):  # rank 0 said so in its line
        return 128 + (came or int(status.get("signal") or signal.SIGTERM))
    if child.returncode == 0:
        return {"done": 0, "diverged": 3}.get(status.get("status"), 1)
    return child.returncode if child.returncode > 0 else 128 - child.returncode


def _wait_passing_signals(child: subprocess.Popen) -> int:
    """Wait for `child`; each SIGINT or SIGTERM that comes meanwhile is sent on to it. The last one (0: none)."""
    def stop(signum, frame):
        raise Interrupted(signum)

    came = 0
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                child.wait()
                return came
            except Interrupted as err:
                came = err.signum
                if child.poll() is None:
                    child.send_signal(came)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["launch", "torchrun_command", "without_nproc"]
