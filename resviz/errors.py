"""Errors a user can fix, and error text cut to one line.

`UserError` marks a failure the user can fix (a missing download, a batch too large for the GPU): the command
line prints it as one line `resviz: error: ...` with exit status 2. Any other exception is a bug and keeps
its traceback. `ValueError`s from validation count as user errors too (they name the bad value and the fix).
"""
from __future__ import annotations

import errno
import os


class UserError(RuntimeError):
    """A failure the user can fix; its message names the fix. A RuntimeError, as these failures were before."""


def first_line(err: BaseException, *, with_type: bool = False) -> str:
    """The first non-blank line of an error's message (the type name when it has none), for one-line reports;
    `with_type` prefixes it with the type name ("OSError: ...")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0]}" if with_type else lines[0]


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after saving itself at a step boundary; `signum` says which, and the
    command line exits 128 + signum (130 for Ctrl-C, 143 for SIGTERM). A KeyboardInterrupt, as Ctrl-C was."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by signal {signum}")
        self.signum = signum

    def __reduce__(self):  # pickled from a pool worker to the sweep: keep the signal
        return type(self), (self.signum, str(self))


class RunBusy(UserError):
    """A run folder held by another live process (its lock); `pid` is the holder."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid

    def __reduce__(self):
        return type(self), (str(self), self.pid)


# OSErrors a user causes and fixes (a full disk, a long name, a read-only place): the fix, by errno
OS_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the file system holds: raise the "
                 "limit or choose another folder",
    errno.ENAMETOOLONG: "a name in the path is longer than the file system takes: use shorter names",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you may write to",
    errno.EPERM: "operation not permitted: choose a folder you may write to",
}


def os_error_line(err: BaseException) -> str | None:
    """One line naming the path and the fix of an OSError the user can cause, or None for any other error
    (a bug, which keeps its traceback)."""
    if not isinstance(err, OSError) or err.errno not in OS_FIXES:
        return None
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or os.strerror(err.errno)}; {OS_FIXES[err.errno]}, then run the same command again"
