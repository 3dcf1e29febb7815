"""SIGINT and SIGTERM turned into a request to stop at the next step boundary.

Inside `StopSignals()` the two signals only set `signum`; the training loop checks it between steps and saves
itself there (a consistent state: no half-done forward, optimiser step or write), then raises
`resviz.errors.Interrupted`. A second signal of the same kind while the first is pending stops at once (the
user insists; the run then resumes from its last checkpoint, still exactly). Handlers can only be installed
in the main thread; elsewhere the block changes nothing. A signal that arrived during the block but was not
acted on (the run finished first) is delivered again when the block ends, to the handlers it had before.
"""
from __future__ import annotations

import ctypes
import signal
import sys
import threading

NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class StopSignals:
    def __init__(self):
        self.signum: int | None = None  # the signal that asked to stop, if any
        self.handled = False  # set by whoever acted on it (saved and raised Interrupted)
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.signum == signum:
            raise KeyboardInterrupt  # the second one: stop now
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in NAMES:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        if self._previous and self.signum is not None and not self.handled and exc_type is None:
            signal.raise_signal(self.signum)  # arrived too late to act on: the caller's handlers decide


def describe(signum: int) -> str:
    return NAMES.get(signum, f"signal {signum}")


def signal_on_parent_death(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send this process `signum` when its parent dies (Linux PR_SET_PDEATHSIG); whether it
    took. Elsewhere nothing happens: the caller watches the parent itself."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(1, int(signum), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False
