"""The private Ray cluster of `resviz sweep --engine ray` (no `--address`), confined to this machine.

Ray's servers (GCS, raylet, workers, agents) listen on every interface whatever node address they are given
(measured with Ray 2.60: `ss -ltn` shows `*:` and `0.0.0.0:` ports). So resviz does not start its private
cluster in the user's network at all: the sweep's driver and the cluster it starts run in a child process inside
a new network namespace (Linux) that holds only the loopback interface. Nothing in it can be reached from another
machine, or even from this machine's other processes. Not root: a user namespace goes with it, mapping the user
to their own uid, so the run folders keep their owner.

The child (`python -P .../resviz/ray_private.py REQUEST RESULT PARENT`: run as a file, so that nothing but the
standard library is imported before `unshare`, which a process with threads cannot call) runs `resviz.ray_engine.run_grid_on_ray` and writes
back the summary table, a user error's line, or that it was interrupted. The parent forwards Ctrl-C (the child
sits in its own process group, so the terminal's signal reaches only the parent, once); when the parent dies the
kernel sends the child SIGTERM, which it treats as Ctrl-C: the runs checkpoint and are marked `interrupted`,
and the same command resumes them.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

CONFINED_ENV = "RESVIZ_RAY_CONFINED"  # "1" in the child: it is inside the loopback-only namespace
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq on Linux: the name, then the flags in a 24-byte union
EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_NO_NAMESPACE = 2, 130, 3
ALTERNATIVE = ("or start Ray yourself (`ray start --head --node-ip-address 127.0.0.1`: its ports are then open on "
               "every interface, guarded by Ray's token authentication) and pass --address auto")


def confined() -> bool:
    """Whether this process is the confined child: a cluster it starts listens on loopback only."""
    return os.environ.get(CONFINED_ENV) == "1"


# ------------------------------------------------------------------------------ the namespace (child side)
def enter_loopback_namespace() -> None:
    """Move this process (single-threaded: call it first) into a new network namespace with only `lo`, up."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    with_user = uid != 0 or libc.unshare(CLONE_NEWNET) != 0  # root in a container may lack CAP_SYS_ADMIN
    if with_user and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare: {os.strerror(code)}")
    if with_user:  # map the user to themselves inside; setgroups must be denied before gid_map is written
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name = b"lo"
        current = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, name, 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, name, current | IFF_UP))


def interfaces() -> list[str]:
    """The network interfaces this process sees (in the confined child: ["lo"])."""
    return sorted(name for _, name in socket.if_nameindex())


def namespace_error() -> str | None:
    """Why this machine cannot confine a private cluster (None when it can): a child tries the namespace."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux's; this is {sys.platform}"
    probe = subprocess.run([sys.executable, "-P", __file__, "--probe"], capture_output=True, text=True, timeout=60)
    return None if probe.returncode == 0 else (probe.stdout.strip() or probe.stderr.strip() or "unshare failed")


def _probe() -> int:
    try:
        enter_loopback_namespace()
    except OSError as err:
        print(err.strerror or err)
        return EXIT_NO_NAMESPACE
    return 0 if interfaces() == ["lo"] else EXIT_NO_NAMESPACE


def _die_with_parent(parent: int) -> None:
    """The kernel sends SIGTERM when the parent dies; SIGTERM becomes KeyboardInterrupt: the runs checkpoint."""
    from resviz.train.signals import signal_on_parent_death

    signal_on_parent_death(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def child_main(request: Path, result: Path, parent: int) -> int:
    try:
        enter_loopback_namespace()
    except OSError as err:
        _write(result, {"error": f"cannot make a network namespace for the private Ray cluster ({err.strerror or err})"
                                 f"; allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1),"
                                 f" {ALTERNATIVE}"})
        return EXIT_NO_NAMESPACE
    os.environ[CONFINED_ENV] = "1"
    _die_with_parent(parent)
    from resviz.errors import UserError
    from resviz.ray_engine import run_grid_on_ray
    from resviz.train import TrainConfig

    spec = pickle.loads(request.read_bytes())
    configs = [TrainConfig.from_dict(c) for c in spec["configs"]]
    try:
        table = run_grid_on_ray(configs, spec["out"], **spec["options"])
    except UserError as err:
        _write(result, {"error": str(err)})
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _write(result, {"interrupted": True})
        return EXIT_INTERRUPTED
    _write(result, {"table": table})
    return 0


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(payload))
    tmp.replace(path)


# ------------------------------------------------------------------------------ the parent side
def run_confined(configs: list, out: str | os.PathLike, **options):
    """Run `run_grid_on_ray(configs, out, **options)` in a child inside a loopback-only network namespace and
    return its summary table. Ctrl-C is forwarded; a user error comes back as the same UserError."""
    from resviz.errors import UserError

    if not sys.platform.startswith("linux"):
        raise UserError("a private Ray cluster confined to this machine needs Linux network namespaces; "
                        f"on {sys.platform}, {ALTERNATIVE.removeprefix('or ')}")
    with tempfile.TemporaryDirectory(prefix="resviz-ray-") as scratch:
        request, result = Path(scratch) / "request.pkl", Path(scratch) / "result.pkl"
        request.write_bytes(pickle.dumps({"configs": [c.to_dict() for c in configs], "out": str(out),
                                          "options": options}))
        child = subprocess.Popen([sys.executable, "-P", __file__, str(request), str(result), str(os.getpid())],
                                 process_group=0)
        interrupted = _wait_forwarding_ctrl_c(child)
        payload = pickle.loads(result.read_bytes()) if result.is_file() else {}
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


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        sys.exit(_probe())
    sys.exit(child_main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))


__all__ = ["CONFINED_ENV", "confined", "enter_loopback_namespace", "interfaces", "namespace_error", "run_confined"]
