"""Helpers shared by the tests, in one place.

- seconds-long training runs for the train, runs, sweep and cli tests: ResNet-8 at width 8 on the built-in
  digits (`TINY`, `tiny`), and the command line run in a subprocess (`cli`);
- an independent reference for the Recorder tests: a resviz net run layer by layer (without its forward), every
  statistic computed directly with torch in float64 (`by_hand`, `std`, `norm`, ...);
- `all_hooks_empty`: the one check that a Recorder left no hook behind;
- the command line in a process that stands for another machine (`cli_on_host`: its own host name) or for a
  file system without flock (`cli_without_flock`: flock(2) answers ENOSYS, as on Lustre without -o flock).
(Fixtures live in conftest.py.)
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resviz.models import ShortcutA, iter_blocks
from resviz.train import TrainConfig

TINY = TrainConfig(dataset="digits", depth=8, width=8, steps=30, batch_size=32, log_every=10, eval_every=10,
                   checkpoint_every=10, record_every=5, eval_batch_size=400, progress=False)


def tiny(data_root, **changes) -> TrainConfig:
    return dataclasses.replace(TINY, root=data_root, **changes)


def image_tree(root, classes=("cat", "dog"), per_class=6, seed=0):
    """An ImageFolder tree `root/{train,test}/<class>/<i>.png` of random 32x32 pictures; `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def cli(*args: str, cwd=None, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resviz.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


# The prelude of `cli_on_host`, run before anything but the standard library is imported (unshare needs one thread):
# a new user namespace (mapping the user to themselves: its files keep their owner) and UTS namespace, so the
# process has a host name of its own and is, to resviz, a process of another machine.
ON_HOST = """
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x10000000 | 0x04000000) != 0:  # CLONE_NEWUSER | CLONE_NEWUTS
    print(f"unshare: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    sys.exit(99)
open("/proc/self/setgroups", "w").write("deny")
open("/proc/self/uid_map", "w").write(f"{uid} {uid} 1")
open("/proc/self/gid_map", "w").write(f"{gid} {gid} 1")
socket.sethostname(sys.argv[1])
from resviz.cli import main
sys.exit(main(sys.argv[2:]))
"""


def cli_on_host(host: str, *args: str, **popen) -> subprocess.Popen:
    """`resviz ARGS` started in a process whose host name is `host` (exit 99: no namespaces here, skip)."""
    return subprocess.Popen([sys.executable, "-c", ON_HOST, host, *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)


# The prelude of `cli_without_flock`: a seccomp filter (classic BPF) that makes flock(2) fail with ENOSYS, as on a
# Lustre mount without -o flock; every other system call is allowed. x86_64 only (exit 99 elsewhere, or where
# prctl is refused).
WITHOUT_FLOCK = """
import ctypes, errno, platform, sys
if platform.machine() != "x86_64":
    print(f"the flock filter is written for x86_64, not {platform.machine()}", file=sys.stderr)
    sys.exit(99)

class Instruction(ctypes.Structure):  # struct sock_filter
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

class Program(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

LOAD, JUMP_IF_EQUAL, RETURN = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
AUDIT_ARCH_X86_64, NR_FLOCK = 0xC000003E, 73
ALLOW, ERRNO = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno
code = [
    (LOAD, 0, 0, 4),                          # seccomp_data.arch
    (JUMP_IF_EQUAL, 0, 3, AUDIT_ARCH_X86_64),  # another ABI: allow
    (LOAD, 0, 0, 0),                          # seccomp_data.nr
    (JUMP_IF_EQUAL, 0, 1, NR_FLOCK),
    (RETURN, 0, 0, ERRNO | errno.ENOSYS),
    (RETURN, 0, 0, ALLOW),
]
instructions = (Instruction * len(code))(*[Instruction(*i) for i in code])
program = Program(len(code), instructions)
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
    print(f"prctl: {errno.errorcode.get(ctypes.get_errno())}", file=sys.stderr)
    sys.exit(99)
import fcntl, tempfile
with tempfile.TemporaryFile() as probe:
    try:
        fcntl.flock(probe, fcntl.LOCK_EX)
    except OSError as err:
        assert err.errno == errno.ENOSYS, err  # the filter is in force
    else:
        print("the seccomp filter did not stop flock", file=sys.stderr)
        sys.exit(99)
from resviz.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_without_flock(*args: str, timeout=300) -> subprocess.CompletedProcess:
    """`resviz ARGS` in a process where flock(2) fails with ENOSYS (exit 99: the filter cannot be installed)."""
    return subprocess.run([sys.executable, "-c", WITHOUT_FLOCK, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def by_hand(model, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The tensors the Recorder observes, keyed by the table's layer names, and the logits."""
    t: dict[str, torch.Tensor] = {}
    h = model.bn1(model.conv1(x))
    t["bn1"] = h
    h = F.relu(h)
    for _, _, name, b in iter_blocks(model):
        a = b.bn1(b.conv1(h))
        t[f"{name}.bn1"] = a
        r = b.bn2(b.conv2(F.relu(a)))
        t[f"{name}.bn2"] = r
        if b.branch_init in ("skipinit", "rezero"):
            r = r * b.branch_scale
        t[f"{name}.probe_branch"] = r
        if b.plain:
            s = r
        else:
            if isinstance(b.shortcut, ShortcutA):  # akamaster's option A, written out again
                p = b.shortcut.pad
                skip = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
            elif isinstance(b.shortcut, nn.Sequential) and len(b.shortcut) == 0:
                skip = h
            else:
                skip = b.shortcut(h)
            t[f"{name}.probe_skip"] = skip
            s = r + skip
        t[f"{name}.probe_sum"] = s
        h = s if b.branch_init == "rezero" else F.relu(s)
        t[f"{name}.probe_out"] = h
    return t, model.linear(h.mean((2, 3)))


def std(t: torch.Tensor) -> float:
    return t.detach().double().std().item()


def channel_std(t: torch.Tensor) -> torch.Tensor:  # (C,)
    t = t.detach().double()
    return t.transpose(0, 1).reshape(t.shape[1], -1).std(1)


def channel_sq_mean(t: torch.Tensor) -> float:
    return t.detach().double().mean((0, 2, 3)).square().mean().item()


def channel_var(t: torch.Tensor) -> float:
    return t.detach().double().var((0, 2, 3), unbiased=False).mean().item()


def norm(t: torch.Tensor) -> float:
    return t.detach().double().norm().item()


def values(df, metric: str, step: int | None = None) -> dict[str, float]:
    """{layer: value} of one metric (pooled rows) at one step (default: the only step)."""
    rows = df[df["metric"] == metric]
    if "channel" in rows.columns:
        rows = rows[rows["channel"] == -1]
    if step is not None:
        rows = rows[rows["step"] == step]
    assert rows["step"].nunique() <= 1, "several steps: pass step="
    return dict(zip(rows["layer"].astype(str), rows["value"]))


def all_hooks_empty(model: nn.Module) -> list[str]:
    """What still holds a hook: module names (any kind of module hook), parameter names (tensor hooks) and
    "global" (a global forward hook). Empty when a Recorder cleaned up after itself."""
    attrs = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks_with_kwargs",
    )
    left = [n for n, m in model.named_modules() for a in attrs if getattr(m, a, None)]
    left += [n for n, p in model.named_parameters() if getattr(p, "_backward_hooks", None)]
    return left + (["global"] if nn.modules.module._global_forward_hooks else [])


def assert_adds_match(df, want: dict) -> None:
    """branch_std / skip_std / sum_std and branch_ratio of every residual add in `df` equal the by-hand values
    of `want` ({add name: (branch, skip, sum) tensors}), in order."""
    tol = dict(rel=1e-4, abs=1e-7)
    for metric, i in (("branch_std", 0), ("skip_std", 1), ("sum_std", 2)):
        got = values(df, metric)
        point = metric.split("_")[0]
        assert list(got) == [f"{a}.probe_{point}" for a in want], metric
        for a, tensors in want.items():
            assert got[f"{a}.probe_{point}"] == pytest.approx(std(tensors[i]), **tol), (metric, a)
    ratio = values(df, "branch_ratio")
    for a, (branch, skip, _) in want.items():
        assert ratio[a] == pytest.approx(norm(branch) / norm(skip), rel=1e-4), a
