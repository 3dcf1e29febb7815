"""Files on disk, written atomically.

Every writer here puts the data under a temporary name in the target's folder, flushes it to disk, gives it the
usual permissions (0666 less the umask; `mkstemp` alone makes 0600) and `os.replace`s it over the target, so a
reader, or a process killed with SIGKILL mid-write, sees the old file or the new one, never half of one.

    atomic_write(path, writer)        writer(tmp_path) writes the file; the rest is done here
    atomic_write_bytes(path, data)    bytes
    atomic_write_json(path, obj)      indented, sorted JSON
    atomic_write_parquet(path, df)    a DataFrame, without its index
    atomic_torch_save(path, obj)      torch.save
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call `writer(tmp)` to write a temporary file beside `path`, then rename it over `path` (folders made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_parquet(path: str | os.PathLike, df) -> Path:
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def atomic_torch_save(path: str | os.PathLike, obj) -> Path:

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def make_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the folder `path` (and its parents), or a ValueError naming it and the fix when it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is an existing file, not a folder; choose a folder for {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionError(f"cannot create {path}: permission denied; choose a writable {flag}") from None
    except OSError as err:
        raise ValueError(f"cannot create folder {path} ({err.strerror}); choose a writable {flag}") from None
    return path

