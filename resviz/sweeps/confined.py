"""The confined child of `resviz sweep --engine ray` without `--address`: a loopback-only network namespace.

Run as a file, never imported (`python -P .../resviz/sweeps/confined.py REQUEST RESULT PARENT`, started by
`resviz.sweeps.private_cluster`), so that nothing but the standard library is imported before `unshare`, which a
process with threads cannot call. The child moves itself into a new network namespace (Linux) that holds only the
loopback interface; not root, a user namespace goes with it, mapping the user to their own uid, so the run
folders keep their owner. Only then does it import resviz and run `resviz.sweeps.ray_engine.run_grid_on_ray` on
the grid in REQUEST, and write back to RESULT the summary table, a user error's line, or that it was interrupted.
When the parent dies the kernel sends this child SIGTERM, which it treats as Ctrl-C: the runs checkpoint and are
marked `interrupted`, and the same command resumes them.

`confined.py --probe` only tries the namespace: exit 0 where it can be made (`private_cluster.namespace_error`).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import pickle
import signal
import socket
import struct
import sys
from pathlib import Path

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq on Linux: the name, then the flags in a 24-byte union
EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_NO_NAMESPACE = 2, 130, 3


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


def probe() -> int:
    """Try the namespace: 0 when this process ends up seeing only `lo`, else EXIT_NO_NAMESPACE (and why)."""
    try:
        enter_loopback_namespace()
    except OSError as err:
        print(err.strerror or err)
        return EXIT_NO_NAMESPACE
    return 0 if sorted(name for _, name in socket.if_nameindex()) == ["lo"] else EXIT_NO_NAMESPACE


def child_main(request: Path, result: Path, parent: int) -> int:
    """Enter the namespace, then run the grid on a private Ray cluster inside it; the exit status says how it went."""
    try:
        enter_loopback_namespace()
    except OSError as err:
        _write(result, {"no_namespace": err.strerror or err})
        return EXIT_NO_NAMESPACE
    # inside the namespace, one thread still: only now is anything but the standard library imported
    from resviz.errors import UserError
    from resviz.sweeps.private_cluster import CONFINED_ENV
    from resviz.sweeps.ray_engine import run_grid_on_ray
    from resviz.train import TrainConfig
    from resviz.train.interrupts import signal_on_parent_death

    os.environ[CONFINED_ENV] = "1"
    _die_with_parent(parent, signal_on_parent_death)
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


def _die_with_parent(parent: int, signal_on_parent_death) -> None:
    """The kernel sends SIGTERM when the parent dies; SIGTERM becomes KeyboardInterrupt: the runs checkpoint."""
    signal_on_parent_death(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(payload))
    tmp.replace(path)


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        sys.exit(probe())
    sys.exit(child_main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
