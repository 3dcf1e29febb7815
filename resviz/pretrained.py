"""akamaster's CIFAR-10 ResNets (github.com/akamaster/pytorch_resnet_cifar10) as resviz models.

`pretrained("resnet20")` .. `pretrained("resnet1202")` looks for the file in `search_dirs` and in the folders
named by $RESVIZ_CHECKPOINTS (os.pathsep-separated), else fetches it with
`torch.hub.load_state_dict_from_url(check_hash=True)` into the torch hub cache. `pretrained(path)` reads a
local `.th`/`.pt` file. The `module.` prefix (DataParallel) is stripped, the depth read from the keys, and the
weights loaded into `cifar_resnet(depth)` with strict=True. Their trainer normalised inputs with
AKAMASTER_MEAN / AKAMASTER_STD.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import torch

from resviz.errors import UserError, first_line
from resviz.io import UnsafeFile
from resviz.io import read_checkpoint as read_weights
from resviz.models import CifarResNet, cifar_resnet

AKAMASTER_MEAN = (0.485, 0.456, 0.406)
AKAMASTER_STD = (0.229, 0.224, 0.225)
AKAMASTER_FILES = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
    "resnet110": "resnet110-1d1ed7c2.th",
    "resnet1202": "resnet1202-f3b1deed.th",
}
AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
CHECKPOINTS_ENV = "RESVIZ_CHECKPOINTS"  # folders holding the .th files, for machines without internet
URL_ENV = "RESVIZ_CHECKPOINT_URL"  # a mirror of AKAMASTER_URL (same file names)
DOWNLOAD_TIMEOUT_S = 60.0  # socket timeout while downloading, so a dead network fails instead of hanging


def pretrained(
    name_or_path: str | os.PathLike,
    *,
    depth: int | None = None,
    search_dirs: Sequence[str | os.PathLike] = (),
    progress: bool = True,
) -> CifarResNet:
    """An akamaster ResNet by name ("resnet20".."resnet1202") or from a checkpoint file, in eval mode.

    depth: refuse a file holding another depth (names imply their depth).
    """
    key = str(name_or_path).lower()
    if key in AKAMASTER_FILES:
        wanted = int(key.removeprefix("resnet"))
        if depth is not None and depth != wanted:
            raise ValueError(f"{name_or_path!r} is a ResNet-{wanted}, not depth={depth}; drop depth= or pick another")
        local = find_local(key, search_dirs)
        label = str(local) if local else AKAMASTER_FILES[key]
        state = read_checkpoint(local) if local else _download(key, progress)
        return build(state, depth=wanted, source=label)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; give a checkpoint file (.th) or a name")
    if not path.is_file():
        if path.suffix or os.sep in str(name_or_path):
            raise FileNotFoundError(f"checkpoint file {path} does not exist; give the path of a .th file or a name")
        raise ValueError(
            f"checkpoint {str(name_or_path)!r} is unknown; use one of {', '.join(AKAMASTER_FILES)} or a .th file path"
        )
    return build(read_checkpoint(path), depth=depth, source=str(path))


def find_local(name: str, search_dirs: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The akamaster file for `name` in `search_dirs` or $RESVIZ_CHECKPOINTS, if one holds it."""
    env = [d for d in os.environ.get(CHECKPOINTS_ENV, "").split(os.pathsep) if d]
    for folder in [*search_dirs, *env]:
        candidate = Path(folder).expanduser() / AKAMASTER_FILES[name]
        if candidate.is_file():
            return candidate
    return None


def hub_path(name: str) -> Path:
    """Where torch hub keeps (or would keep) the akamaster file for `name`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / AKAMASTER_FILES[name]


def _download(name: str, progress: bool) -> dict:
    file = AKAMASTER_FILES[name]
    url = (os.environ.get(URL_ENV) or AKAMASTER_URL).rstrip("/") + "/" + file
    cached = hub_path(name)
    try:
        # torch.hub prints "Downloading: ..." on stdout: send it to stderr, keep stdout for results (--json)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), redirect_stdout(sys.stderr):
            return torch.hub.load_state_dict_from_url(
                url, check_hash=True, map_location="cpu", progress=progress, weights_only=True
            )
    except OSError as err:  # URLError, timeouts, a full disk
        raise UserError(
            f"could not download {file} from {url} ({first_line(err)}); without internet put {file} into "
            f"{cached.parent}/ (the torch hub cache) or into a folder named by ${CHECKPOINTS_ENV}"
        ) from err
    except RuntimeError as err:
        if "invalid hash" in str(err):  # torch.hub deleted the partial download
            raise UserError(f"{url} did not match its SHA-256 prefix ({first_line(err)}); try again") from err
        raise ValueError(_unreadable(cached, err)) from err
    except Exception as err:  # a truncated or foreign file already in the hub cache
        raise ValueError(_unreadable(cached, err)) from err


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw object of a checkpoint file (tensors only: weights_only=True), or a one-line ValueError."""
    try:
        return read_weights(path)  # weights_only: a crafted file runs no code
    except UnsafeFile:
        raise
    except Exception as err:
        raise ValueError(_unreadable(Path(path), err)) from err


def _unreadable(path: Path, err: BaseException) -> str:
    return f"{path} is not a readable checkpoint, truncated or not a torch file ({first_line(err)}); delete it and fetch it again"


def state_dict_of(obj) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint object ({"state_dict": ...} or a bare state dict), without `module.`."""
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def infer_depth(state: Mapping[str, torch.Tensor]) -> int:
    """6n+2 from the number of blocks per stage in the keys (layer1.{i}.conv1.weight ...)."""
    blocks = {}
    for stage in (1, 2, 3):
        found = [int(m.group(1)) for k in state if (m := re.fullmatch(rf"layer{stage}\.(\d+)\.conv1\.weight", k))]
        blocks[stage] = max(found) + 1 if found else 0
    if not blocks[1] or len(set(blocks.values())) != 1:
        raise ValueError(f"has no CIFAR ResNet layout (blocks per stage {blocks}); expected layer1..3 of n blocks each")
    return 6 * blocks[1] + 2


def build(obj, *, depth: int | None = None, source: str = "checkpoint") -> CifarResNet:
    """A resviz CIFAR ResNet holding the weights of checkpoint object `obj`, strictly loaded, in eval mode."""
    try:
        state = state_dict_of(obj)
        held = infer_depth(state)
    except ValueError as err:
        raise ValueError(f"{source} {err}; is it a CIFAR ResNet checkpoint (akamaster layout)?") from err
    if depth is not None and depth != held:
        raise ValueError(f"{source} holds a ResNet-{held}, not the requested depth={depth}; ask for depth={held}")
    width = state["conv1.weight"].shape[0] if "conv1.weight" in state else 16
    classes = state["linear.weight"].shape[0] if "linear.weight" in state else 10
    shortcut = "B" if any(".shortcut.0." in k for k in state) else "A"
    model = cifar_resnet(held, shortcut=shortcut, width=width, num_classes=classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ValueError(f"{source} does not fit a ResNet-{held} (option {shortcut}): {detail}") from err
    return model.eval()


__all__ = [
    "AKAMASTER_FILES",
    "AKAMASTER_MEAN",
    "AKAMASTER_STD",
    "AKAMASTER_URL",
    "CHECKPOINTS_ENV",
    "build",
    "find_local",
    "hub_path",
    "infer_depth",
    "pretrained",
    "read_checkpoint",
    "state_dict_of",
]
