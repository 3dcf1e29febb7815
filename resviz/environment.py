"""The software a run was made with, as written into every run folder's config.json (`versions`)."""
from __future__ import annotations

import platform

import torch

__version__ = "0.1.0"  # the one place the package version is written (pyproject.toml reads it)


def versions(**extra: str) -> dict:
    """{"resviz", "torch", "python"} versions of this process, plus `extra` (e.g. lightning="2.4.0")."""
    return {"resviz": __version__, "torch": torch.__version__, "python": platform.python_version(), **extra}


__all__ = ["versions"]
