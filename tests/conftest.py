"""Shared fixtures: where ../shared lives, the devices to run on, small thread counts for the 2-core CI.

Only the tests know the development folder ../shared (or $RESVIZ_SHARED): the package and the notebooks read
local copies from environment variables alone, which `dev_copies` sets from it. notebooks/ is put on sys.path
so that tests import notebooks/sizes.py as the notebooks do (`import sizes`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# One thread per process in the suite: tiny nets gain nothing from more, and on a busy 2-core machine
# spinning OpenMP threads make each step many times slower. Subprocesses (CLI, notebook kernels) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESVIZ_SHARED", ROOT.parent / "shared"))
AKAMASTER = SHARED / "pretrained" / "akamaster"
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
NOTEBOOK_DIR = ROOT / "notebooks"
sys.path.insert(0, str(NOTEBOOK_DIR))

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Device-parametrised tests run on the CPU, and on CUDA too when present."""
    return request.param


@pytest.fixture(scope="session")
def akamaster_dir() -> Path:
    if not AKAMASTER.is_dir():
        pytest.skip(f"akamaster checkpoints not found at {AKAMASTER}")
    return AKAMASTER


@pytest.fixture(scope="session")
def cifar_jpeg_archive() -> Path:
    """The real CIFAR-10 JPEG copy (a .tar.gz), read in place."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"CIFAR-10 JPEG copy not found at {CIFAR_JPEG}")
    return CIFAR_JPEG


@pytest.fixture
def dev_copies(monkeypatch) -> None:
    """$RESVIZ_CHECKPOINTS and $RESVIZ_CIFAR_JPEG pointed at the copies in ../shared, where they exist and the
    variables are not set already (undone after the test; notebook kernels started meanwhile inherit them)."""
    for name, path in (("RESVIZ_CHECKPOINTS", AKAMASTER), ("RESVIZ_CIFAR_JPEG", CIFAR_JPEG)):
        if path.exists() and not os.environ.get(name):
            monkeypatch.setenv(name, str(path))


@pytest.fixture(scope="session")
def cifar_jpeg_tree(tmp_path_factory, cifar_jpeg_archive) -> Path:
    """The real CIFAR-10 JPEG copy, unpacked once per session into a temporary folder."""
    import tarfile

    dest = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(cifar_jpeg_archive) as tar:
        tar.extractall(dest, filter="data")
    roots = [p.parent for p in dest.rglob("train") if p.is_dir() and (p.parent / "test").is_dir()]
    assert roots, f"no train/ and test/ folders inside {cifar_jpeg_archive}"
    return roots[0]


@pytest.fixture
def one_thread():
    """Tiny nets run faster on one thread, and two OpenMP threads on a busy 2-core machine crawl (25x here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    """A data folder per test module (the built-in digits are cached there once)."""
    return str(tmp_path_factory.mktemp("data"))
