"""Datasets as uint8 tensors, cached on disk, and a loader that augments on the device.

`load(spec, root="data")` returns a `Dataset` for one of:
    "digits"           scikit-learn's 8x8 handwritten digits (ships with scikit-learn, no download): grey
                       0..16 scaled to 0..255, each pixel repeated 4x4 to 32x32, replicated to 3 channels;
                       a fixed stratified split (random_state=0): 1,437 train / 360 test images.
    "cifar10"          CIFAR-10 from its python pickle batches in `root/cifar-10-batches-py`; extracted from
                       `root/cifar-10-python.tar.gz` if only the archive is there; downloaded (torchvision's
                       URL and md5) only when neither is.
    "imagefolder:PATH" a torchvision ImageFolder tree `PATH/{train,test}/<class>/<image>`; classes sorted by
                       name; images that are not 32x32 are resized to 32x32 (bilinear, antialiased).

Each is decoded once and cached in `root` as plain uint8 tensors (`torch.save`) with a header holding a
format version, a fingerprint of the source (file names, sizes, mtimes) and a CRC32 per tensor; a changed
source, a truncated or corrupted cache is rebuilt, never trusted. Cache files are written atomically.

The loader that keeps a split on the device and augments it there is `resviz.loader.DeviceLoader` (also
importable from here, as are `augment`, `resolve_device` and `PAD`).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from resviz.errors import UserError, first_line
from resviz.io import atomic_torch_save
from resviz.loader import PAD, DeviceLoader, augment, resolve_device  # noqa: F401 - re-exported

SPECS = ("digits", "cifar10", "imagefolder:PATH")
CACHE_FORMAT = 1  # bump when the cache layout or the decoding changes
SIZE = 32  # every image is (3, SIZE, SIZE)

DIGITS_TEST = 360  # images in the digits test split
DIGITS_SEED = 0  # random_state of the stratified digits split

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR10_URL_ENV = "RESVIZ_CIFAR10_URL"  # a mirror of cifar-10-python.tar.gz (default: torchvision's URL)
DECODE_CHUNK = 1000  # files read and decoded per step (one progress-bar update)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test images as uint8 (N, 3, 32, 32), labels int64 (N,); mean/std per channel on 0..1 (train)."""
    name: str
    train_images: torch.Tensor  # (N, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, 3, 32, 32) uint8
    test_labels: torch.Tensor  # (M,) int64
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of "train" or "test"."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"split={name!r} is unknown; use 'train' or 'test'")

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"classes={len(self.classes)})"
        )


# ---------------------------------------------------------------------------------------------
# load: parse the spec, use the cache or build it
# ---------------------------------------------------------------------------------------------


def load(spec: str, root: str | os.PathLike = "data", *, progress: bool = True) -> Dataset:
    """The dataset named by `spec` ("digits", "cifar10" or "imagefolder:PATH"), cached in `root`."""
    root = Path(root)
    if spec == "digits":
        return _cached(root / "resviz-digits.pt", "digits", _digits_fingerprint(), _build_digits)
    if spec == "cifar10":
        folder = _cifar10_folder(root)
        return _cached(root / "resviz-cifar10.pt", "cifar10", _tree_fingerprint(folder), lambda: _build_cifar10(folder))
    if isinstance(spec, str) and spec.startswith("imagefolder:") and spec != "imagefolder:":
        tree = Path(spec.split(":", 1)[1]).expanduser()
        samples, classes = _imagefolder_samples(tree)
        key = hashlib.sha1(str(tree.resolve()).encode()).hexdigest()[:10]
        return _cached(
            root / f"resviz-imagefolder-{tree.resolve().name}-{key}.pt",
            f"imagefolder:{tree}",
            _files_fingerprint(tree, samples["train"] + samples["test"], classes),
            lambda: _build_imagefolder(samples, classes, progress),
        )
    raise ValueError(f"dataset {spec!r} is unknown; use one of: {', '.join(SPECS)}")


def _cached(path: Path, name: str, fingerprint: str, build) -> Dataset:
    """Load `path` if its header matches `fingerprint` and its tensors their CRCs; else build and save it."""
    if path.is_file():
        try:
            return _read_cache(path, name, fingerprint)
        except _StaleCache:
            pass
        except Exception as err:  # truncated, corrupted or foreign file: rebuild it
            warnings.warn(f"dataset cache {path} is unreadable ({first_line(err)}); rebuilding it", stacklevel=3)
    train_images, train_labels, test_images, test_labels, classes = build()
    mean, std = channel_stats(train_images)
    tensors = {
        "train_images": train_images.contiguous(),
        "train_labels": train_labels.to(torch.int64).contiguous(),
        "test_images": test_images.contiguous(),
        "test_labels": test_labels.to(torch.int64).contiguous(),
    }
    header = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "classes": list(classes),
        "mean": mean,
        "std": std,
        "crc": {k: _crc(v) for k, v in tensors.items()},
    }
    try:
        atomic_torch_save(path, {"header": header, **tensors})
    except OSError as err:  # a read-only or full root: still usable, decoded again next time
        warnings.warn(f"cannot write dataset cache {path} ({first_line(err)}); pass a writable root", stacklevel=3)
    return Dataset(name=name, classes=list(classes), mean=mean, std=std, **tensors)


class _StaleCache(Exception):
    """The cache is intact but describes another source or format: rebuild it quietly."""


def _read_cache(path: Path, name: str, fingerprint: str) -> Dataset:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    header = blob["header"]
    if header.get("format") != CACHE_FORMAT or header.get("fingerprint") != fingerprint:
        raise _StaleCache()
    tensors = {k: blob[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    for key, t in tensors.items():
        if _crc(t) != header["crc"][key]:
            raise ValueError(f"{key} fails its CRC check")
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.dtype != torch.uint8 or images.shape[1:] != (3, SIZE, SIZE) or labels.shape != images.shape[:1]:
            raise ValueError(f"{split} tensors have shapes {tuple(images.shape)} and {tuple(labels.shape)}")
    return Dataset(
        name=name,
        classes=list(header["classes"]),
        mean=tuple(header["mean"]),
        std=tuple(header["std"]),
        **tensors,
    )


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().numpy().data)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images (N, 3, H, W), on the 0..1 scale; exact, from
    each channel's histogram of the 256 values."""
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)  # (256,)
        n = counts.sum()
        m = (counts * values).sum() / n
        var = ((counts * values.square()).sum() / n - m.square()).clamp_min(0)
        mean.append(m.item() / 255)
        std.append(var.sqrt().item() / 255)
    return tuple(mean), tuple(std)


# ---------------------------------------------------------------------------------------------
# fingerprints of the sources
# ---------------------------------------------------------------------------------------------


def _digits_fingerprint() -> str:

    return f"sklearn-digits {version('scikit-learn')} repeat4x4 test={DIGITS_TEST} seed={DIGITS_SEED}"


def _files_fingerprint(base: Path, files, extra) -> str:
    """Hash of (relative name, size, mtime) of every file, plus `extra`: a changed tree gets a new one."""
    h = hashlib.sha256(repr(extra).encode())
    skip = len(str(base)) + 1
    for item in files:
        path = str(item[0] if isinstance(item, tuple) else item)
        st = os.stat(path)
        h.update(f"{path[skip:]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{len(files)} files {h.hexdigest()}"


def _tree_fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _files_fingerprint(folder, files, folder.name)


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def _build_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = torch.from_numpy(digits.images).round().clamp(0, 16)  # (1797, 8, 8) float64, 0..16
    up = grey.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (1797, 32, 32): each pixel a 4x4 block
    images = (up * 255 / 16).round().to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).to(torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=DIGITS_TEST, stratify=labels.numpy(), random_state=DIGITS_SEED
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    classes = [str(c) for c in digits.target_names]
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], classes


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# ---------------------------------------------------------------------------------------------


def _cifar10_folder(root: Path) -> Path:
    """`root/cifar-10-batches-py`, extracted from the archive in `root` or downloaded when neither is there."""
    folder = root / CIFAR10_FOLDER
    names = (*CIFAR10_TRAIN, *CIFAR10_TEST, "batches.meta")
    if all((folder / n).is_file() for n in names):
        return folder
    archive = root / CIFAR10_ARCHIVE
    if not archive.is_file():
        _download_cifar10(root)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(
            f"{archive} is not a readable CIFAR-10 archive ({first_line(err)}); delete it and run again"
        ) from err
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ValueError(
            f"{archive} holds no {CIFAR10_FOLDER}/{missing[0]}; it is not cifar-10-python.tar.gz: delete it and run again"
        )
    return folder


def _download_cifar10(root: Path) -> None:
    """torchvision's CIFAR10 download (URL + md5 of the archive); offline, say where to put the archive."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_url

    url = os.environ.get(CIFAR10_URL_ENV) or CIFAR10.url
    root.mkdir(parents=True, exist_ok=True)
    try:
        download_url(url, str(root), filename=CIFAR10_ARCHIVE, md5=CIFAR10.tgz_md5)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad md5 a RuntimeError
        raise UserError(
            f"could not download CIFAR-10 from {url} ({first_line(err)}); on a machine without internet put "
            f"{CIFAR10_ARCHIVE} (from {CIFAR10.url}) or its extracted {CIFAR10_FOLDER}/ into {root.resolve()}/ "
            "and run again"
        ) from err


def _read_cifar_pickle(path: Path) -> dict:
    """One CIFAR python pickle as a dict with str keys (the real files hold Python 2 byte-string keys)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    except Exception as err:
        raise ValueError(
            f"{path} is not a CIFAR-10 pickle batch ({first_line(err)}); delete {path.parent} and run again "
            "to extract or download it afresh"
        ) from err


def _read_cifar_batches(folder: Path, names) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        entry = _read_cifar_pickle(folder / name)
        data, targets = entry.get("data"), entry.get("labels")
        if data is None or targets is None or getattr(data, "ndim", 0) != 2 or data.shape[1] != 3 * SIZE * SIZE:
            raise ValueError(
                f"{folder / name} lacks 'data' (N, 3072) uint8 and 'labels'; delete {folder} and run again"
            )
        if len(targets) != data.shape[0]:
            raise ValueError(f"{folder / name} has {data.shape[0]} images but {len(targets)} labels; delete {folder}")
        images.append(torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, SIZE, SIZE))  # rows are CHW
        labels.append(torch.as_tensor(list(targets), dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def _build_cifar10(folder: Path):
    meta = _read_cifar_pickle(folder / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta["label_names"]]
    train = _read_cifar_batches(folder, CIFAR10_TRAIN)
    test = _read_cifar_batches(folder, CIFAR10_TEST)
    for split, labels in (("train", train[1]), ("test", test[1])):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{folder}: {split} labels fall outside the {len(classes)} classes of batches.meta")
    return *train, *test, classes


# ---------------------------------------------------------------------------------------------
# ImageFolder trees
# ---------------------------------------------------------------------------------------------


def _imagefolder_samples(tree: Path):
    """{split: [(path, class index)]} and the class names of `tree/{train,test}/<class>/`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not tree.is_dir():
        raise FileNotFoundError(
            f"imagefolder:{tree}: no such folder; give the path of a folder holding train/<class>/ and test/<class>/"
        )
    for split in ("train", "test"):
        if not (tree / split).is_dir():
            raise FileNotFoundError(
                f"imagefolder:{tree} has no {split}/ folder; an ImageFolder tree needs train/<class>/ and test/<class>/"
            )
    classes = {}
    for split in ("train", "test"):
        try:
            classes[split] = find_classes(str(tree / split))[0]
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"imagefolder:{tree}: {split}/ holds no class folders; put each class's images in {split}/<class>/"
            ) from err
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"])) or ["-"]
        only_test = sorted(set(classes["test"]) - set(classes["train"])) or ["-"]
        raise ValueError(
            f"imagefolder:{tree}: train/ and test/ hold different classes (only in train: {', '.join(only_train)}; "
            f"only in test: {', '.join(only_test)}); give both splits the same class folders"
        )
    class_to_idx = {c: i for i, c in enumerate(classes["train"])}
    samples = {}
    for split in ("train", "test"):
        try:
            samples[split] = make_dataset(str(tree / split), class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as err:  # a class folder without a single image file
            raise FileNotFoundError(
                f"imagefolder:{tree}: a class folder in {split}/ holds no images ({first_line(err)}); "
                "add images to it or remove it from both splits"
            ) from err
    return samples, classes["train"]


def _build_imagefolder(samples, classes, progress: bool):
    out = []
    for split in ("train", "test"):
        paths = [p for p, _ in samples[split]]
        out.append(decode_images(paths, desc=f"decoding {split}", progress=progress))
        out.append(torch.tensor([c for _, c in samples[split]], dtype=torch.int64))
    return *out, classes


def decode_images(paths, *, desc: str = "decoding", progress: bool = True) -> torch.Tensor:
    """Decode image files to uint8 (N, 3, 32, 32): JPEGs in batches (libjpeg-turbo), others one by one;
    an image of another size is resized to 32x32 (bilinear, antialiased)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.empty((len(paths), 3, SIZE, SIZE), dtype=torch.uint8)
    with (
        tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar,
        warnings.catch_warnings(),
    ):
        # torchvision 0.29 marks torchvision.io decoding deprecated (in favour of torchcodec) on every call
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = paths[start : start + DECODE_CHUNK]
            data = [_read_bytes(p) for p in chunk]
            jpeg = [i for i, d in enumerate(data) if d[:2].tolist() == [0xFF, 0xD8]]
            decoded: list[torch.Tensor | None] = [None] * len(chunk)
            try:
                if jpeg:
                    for i, img in zip(jpeg, decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB)):
                        decoded[i] = img
            except RuntimeError:  # a broken JPEG in the batch: decode one by one to name it
                pass
            for i, img in enumerate(decoded):
                img = img if img is not None else _decode_one(chunk[i], data[i])  # (3, h, w)
                out[start + i] = _to_size(img)
            bar.update(len(chunk))
    return out


def _read_bytes(path) -> torch.Tensor:
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"{path} is empty (0 bytes), not an image; remove it or replace it with the image")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_one(path, data: torch.Tensor) -> torch.Tensor:
    """(3, h, w) uint8 from torchvision's decoders, or PIL for formats they lack; else name the file."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        pass
    try:

        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as err:
        raise ValueError(f"{path} is not an image ({first_line(err)}); delete it or move it out of the tree") from err


def _to_size(img: torch.Tensor) -> torch.Tensor:
    if img.shape[1:] == (SIZE, SIZE):
        return img
    from torchvision.transforms.v2.functional import resize

    return resize(img, [SIZE, SIZE], antialias=True)


__all__ = [
    "CACHE_FORMAT",
    "SPECS",
    "Dataset",
    "DeviceLoader",
    "augment",
    "channel_stats",
    "decode_images",
    "load",
    "resolve_device",
]
