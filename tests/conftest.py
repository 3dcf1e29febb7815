"""Shared fixtures: where ../shared lives, the devices to run on, small thread counts for the 2-core CI."""
from __future__ import annotations

import os
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
def cifar_jpeg_tree(tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG copy, unpacked once per session into a temporary folder."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"CIFAR-10 JPEG copy not found at {CIFAR_JPEG}")
    import tarfile

    dest = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(CIFAR_JPEG) as tar:
        tar.extractall(dest, filter="data")
    roots = [p.parent for p in dest.rglob("train") if p.is_dir() and (p.parent / "test").is_dir()]
    assert roots, f"no train/ and test/ folders inside {CIFAR_JPEG}"
    return roots[0]
