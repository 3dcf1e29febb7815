"""SIGINT and SIGTERM turned into a request to stop at the next step boundary, honoured within seconds.

Inside `StopSignals()` the two signals only set `signum`; the training loop checks it between steps and saves
itself there (a consistent state: no half-done forward, optimiser step or write), then raises
`resviz.errors.Interrupted`. The loop says where it is (`phase`): a step or an evaluation that outlasts
`grace` seconds after the signal (a very deep net on a CPU) is abandoned, `StopNow` raised from inside it by
SIGALRM (the state in memory is dropped; the run resumes from its last checkpoint, still exactly); while setting
up, a signal stops at once the same way (nothing trained yet). A second signal of the same kind while the first
is pending stops at once too (the user insists), as `StopNow` with that signal. Handlers can only be installed
in the main thread; elsewhere the block changes nothing. A signal that arrived during the block but was not
acted on (the run finished first) is delivered again when the block ends, to the handlers it had before.
"""
from __future__ import annotations

import ctypes
import signal
import sys
import threading

from resviz.errors import Interrupted

NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}
GRACE = 10.0  # seconds a step may go on after a signal before it is abandoned for the last checkpoint


class StopNow(Interrupted):
    """Stop at once, dropping the state in memory: the last checkpoint is the consistent state to resume from."""


class StopSignals:
    def __init__(self, grace: float | None = None):
        self.signum: int | None = None  # the signal that asked to stop, if any
        self.handled = False  # set by whoever acted on it (saved and raised Interrupted)
        # set by a training loop: "setup" | "step" (the state in memory may be dropped) | "boundary" (saving,
        # checking); None (a sweep's loop): a signal only sets `signum`
        self.phase: str | None = None
        self.grace = GRACE if grace is None else grace
        self._previous: dict = {}

    def _handler(self, signum, frame):
        again, self.signum = self.signum == signum, signum
        if again:
            raise StopNow(signum, f"stopped at once by a second {describe(signum)}")
        if self.phase == "setup":
            raise StopNow(signum, f"stopped by {describe(signum)} while setting up")
        if self.phase is not None:
            signal.setitimer(signal.ITIMER_REAL, self.grace)  # a step that outlasts the grace is abandoned

    def _alarm(self, signum, frame):
        if self.signum is None or self.handled:
            return
        if self.phase != "step":  # saving, or at a boundary: the check is near; look again in a second
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            return
        raise StopNow(self.signum, f"stopped by {describe(self.signum)} inside a step that outlasted the "
                                   f"{self.grace:g} s grace")

    def acted(self) -> None:
        """The loop acts on the signal (saves at a boundary, or records a StopNow): nothing is abandoned now."""
        self.handled = True
        self.phase = "boundary"
        if self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in NAMES:
                self._previous[sig] = signal.signal(sig, self._handler)
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._alarm)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
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
