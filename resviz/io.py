"""Files on disk, written atomically.

Every writer here puts the data under a temporary name in the target's folder, flushes it to disk, gives it the
usual permissions (0666 less the umask; `mkstemp` alone makes 0600) and `os.replace`s it over the target, so a
reader, or a process killed with SIGKILL mid-write, sees the old file or the new one, never half of one.

    atomic_write(path, writer)        writer(tmp_path) writes the file; the rest is done here
    atomic_write_bytes(path, data)    bytes
    atomic_write_json(path, obj)      indented, sorted JSON
    atomic_write_parquet(path, df)    a DataFrame, without its index
    atomic_torch_save(path, obj)      torch.save

and reads what it wrote without running code from the file: `read_checkpoint` (torch.load with
weights_only=True) and `read_plain_pickle` (a pickle of plain values and numpy arrays: the CIFAR-10 batches).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Callable

import torch

from resviz.errors import OS_FIXES


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
    except OSError as err:  # the old file stays whole; the error names the file (writers leave it out)
        tmp.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
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
    buffer = io.BytesIO()  # serialised in memory first: torch's file writer reports a full disk without errno
    torch.save(obj, buffer)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def safe_name(name: str, limit: int = 100) -> str:
    """`name` made fit for a file name: unprintable characters and separators as "_", and a name of more than
    `limit` bytes cut, with a hash of the whole so that two long names stay apart. Usual names stay as they are."""
    clean = "".join("_" if not ch.isprintable() or ch in "/\\" else ch for ch in name)
    if clean == name and len(os.fsencode(name)) <= limit:
        return name
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
    return os.fsencode(clean)[: limit - 9].decode(errors="ignore") + "-" + digest


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
        fix = OS_FIXES.get(err.errno, "choose a writable folder").replace("folder", flag)
        raise ValueError(f"cannot create folder {path} ({err.strerror}); {fix}") from None
    return path



class UnsafeFile(ValueError):
    """A file that holds more than tensors and plain values: loading it would run code it names. Refused."""


def _refusal(path, err: Exception, what: str) -> UnsafeFile:
    named = re.search(r"GLOBAL ([\w.]+)", str(err))
    needs = f"needs {named.group(1)}" if named else "needs more than tensors and plain values"
    return UnsafeFile(f"{path} {needs} to load, which would run code from the file; resviz reads {what} only: "
                      "delete the file, or re-create it from a source you trust")


def read_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """A file written by torch.save, loaded with weights_only=True: tensors, containers and plain values, so a
    crafted file runs no code. A file that needs any other global is refused with `UnsafeFile` naming it;
    other damage (a truncated file) raises what torch raises."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise _refusal(path, err, "weights and plain values") from None
        raise


# the globals a pickle of dicts, lists, bytes and numpy arrays needs (Python 2 and 3 writers, numpy 1 and 2)
PLAIN_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in PLAIN_GLOBALS:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")
        return super().find_class(module, name)


def read_plain_pickle(path: str | os.PathLike, encoding: str = "ASCII"):
    """A pickle of plain values and numpy arrays (the CIFAR-10 batches), read without running code: any other
    global is refused with `UnsafeFile` naming it."""
    with open(path, "rb") as f:
        try:
            return _PlainUnpickler(f, encoding=encoding).load()
        except pickle.UnpicklingError as err:
            if "is not allowed" in str(err):
                raise _refusal(path, err, "plain values and arrays") from None
            raise
