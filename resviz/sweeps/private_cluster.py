"""The private Ray cluster of `resviz sweep --engine ray` (no `--address`), confined to this machine: the parent side.

Ray's servers (GCS, raylet, workers, agents) listen on every interface whatever node address they are given
(measured with Ray 2.60: `ss -ltn` shows `*:` and `0.0.0.0:` ports). So resviz does not start its private
cluster in the user's network at all: the sweep's driver and the cluster it starts run in a child process inside
a new network namespace (Linux) that holds only the loopback interface (`resviz/sweeps/confined.py`). Nothing in
it can be reached from another machine, or even from this machine's other processes.

This side starts the child by its file (`python -P .../resviz/sweeps/confined.py REQUEST RESULT PARENT`: nothing
of resviz is imported there before `unshare`, which a process with threads cannot call), hands it the grid in
REQUEST and reads back from RESULT the summary table, a user error's line, or that it was interrupted. Ctrl-C is
forwarded (the child sits in its own process group, so the terminal's signal reaches only this process, once);
when this process dies the kernel sends the child SIGTERM, which it treats as Ctrl-C.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from resviz.errors import UserError

CHILD = Path(__file__).with_name("confined.py")  # run as a file, never imported here
CONFINED_ENV = "RESVIZ_RAY_CONFINED"  # "1" in the child: a cluster it starts is inside the loopback-only namespace
ALTERNATIVE = ("or start Ray yourself (`ray start --head --node-ip-address 127.0.0.1`: its ports are then open on "
               "every interface, guarded by Ray's token authentication) and pass --address auto")


def confined() -> bool:
    """Whether this process is the confined child: a cluster it starts listens on loopback only."""
    return os.environ.get(CONFINED_ENV) == "1"


def namespace_error() -> str | None:
    """Why this machine cannot confine a private cluster (None when it can): a child tries the namespace."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux's; this is {sys.platform}"
    probe = subprocess.run([sys.executable, "-P", str(CHILD), "--probe"], capture_output=True, text=True, timeout=60)
    return None if probe.returncode == 0 else (probe.stdout.strip() or probe.stderr.strip() or "unshare failed")


def run_confined(configs: list, out: str | os.PathLike, **options):
    """Run `run_grid_on_ray(configs, out, **options)` in a child inside a loopback-only network namespace and
    return its summary table. Ctrl-C is forwarded; a user error comes back as the same UserError."""
    if not sys.platform.startswith("linux"):
        raise UserError("a private Ray cluster confined to this machine needs Linux network namespaces; "
                        f"on {sys.platform}, {ALTERNATIVE.removeprefix('or ')}")
    with tempfile.TemporaryDirectory(prefix="resviz-ray-") as scratch:
        request, result = Path(scratch) / "request.pkl", Path(scratch) / "result.pkl"
        request.write_bytes(pickle.dumps({"configs": [c.to_dict() for c in configs], "out": str(out),
                                          "options": options}))
        child = subprocess.Popen([sys.executable, "-P", str(CHILD), str(request), str(result), str(os.getpid())],
                                 process_group=0)
        interrupted = _wait_forwarding_ctrl_c(child)
        payload = pickle.loads(result.read_bytes()) if result.is_file() else {}
    if "no_namespace" in payload:
        raise UserError(f"cannot make a network namespace for the private Ray cluster ({payload['no_namespace']})"
                        f"; allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1),"
                        f" {ALTERNATIVE}")
    if "error" in payload:
        raise UserError(payload["error"])
    if interrupted or payload.get("interrupted"):
        raise KeyboardInterrupt
    if "table" not in payload:
        raise RuntimeError(f"the confined Ray sweep (pid {child.pid}) exited {child.returncode} without a result; "
                           "its traceback is above")
    return payload["table"]


def _wait_forwarding_ctrl_c(child: subprocess.Popen) -> bool:
    """Wait for the child; each Ctrl-C here is sent on to it (it cancels its runs and exits). True if any came."""
    interrupted = False
    while True:
        try:
            child.wait()
            return interrupted
        except KeyboardInterrupt:
            interrupted = True
            if child.poll() is None:
                child.send_signal(signal.SIGINT)


__all__ = ["CONFINED_ENV", "confined", "namespace_error", "run_confined"]
