"""Seconds-long training runs for the train, runs, sweep and cli tests: ResNet-8 at width 8 on the built-in
digits, and the command line run in a subprocess."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from resviz.train import TrainConfig

TINY = TrainConfig(dataset="digits", depth=8, width=8, steps=30, batch_size=32, log_every=10, eval_every=10,
                   checkpoint_every=10, record_every=5, eval_batch_size=400, progress=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root, **changes) -> TrainConfig:
    return dataclasses.replace(TINY, root=data_root, **changes)


def cli(*args: str, cwd=None, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resviz.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
