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

`DeviceLoader` keeps a whole split on the device as uint8 and augments each batch there (4-pixel zero pad,
random 32x32 crop, horizontal flip), then converts and normalises: no DataLoader workers, no PIL.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SPECS = ("digits", "cifar10", "imagefolder:PATH")
CACHE_FORMAT = 1  # bump when the cache layout or the decoding changes
SIZE = 32  # every image is (3, SIZE, SIZE)
PAD = 4  # augmentation: zero padding on each side before the random crop

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
            warnings.warn(f"dataset cache {path} is unreadable ({_first_line(err)}); rebuilding it", stacklevel=3)
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
        _atomic_save({"header": header, **tensors}, path)
    except OSError as err:  # a read-only or full root: still usable, decoded again next time
        warnings.warn(f"cannot write dataset cache {path} ({_first_line(err)}); pass a writable root", stacklevel=3)
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


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    from importlib.metadata import version

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
            f"{archive} is not a readable CIFAR-10 archive ({_first_line(err)}); delete it and run again"
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
        raise RuntimeError(
            f"could not download CIFAR-10 from {url} ({_first_line(err)}); on a machine without internet put "
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
            f"{path} is not a CIFAR-10 pickle batch ({_first_line(err)}); delete {path.parent} and run again "
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
                f"imagefolder:{tree}: a class folder in {split}/ holds no images ({_first_line(err)}); "
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
    from tqdm.auto import tqdm

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
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def _decode_one(path, data: torch.Tensor) -> torch.Tensor:
    """(3, h, w) uint8 from torchvision's decoders, or PIL for formats they lack; else name the file."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        pass
    try:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as err:
        raise ValueError(f"{path} is not an image ({_first_line(err)}); delete it or move it out of the tree") from err


def _to_size(img: torch.Tensor) -> torch.Tensor:
    if img.shape[1:] == (SIZE, SIZE):
        return img
    from torchvision.transforms.v2.functional import resize

    return resize(img, [SIZE, SIZE], antialias=True)


# ---------------------------------------------------------------------------------------------
# augmentation and the device loader
# ---------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; a CUDA device on a machine without one is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a device; use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine; use cpu or auto")
    return dev


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """He et al.'s CIFAR augmentation on a uint8 batch (B, C, H, W), on its own device: zero-pad 4 pixels,
    take a random HxW crop, flip it horizontally with probability 1/2. Draws offsets, then flips."""
    b, c, h, w = images.shape
    dev = images.device
    hp, wp = h + 2 * PAD, w + 2 * PAD
    padded = F.pad(images, (PAD, PAD, PAD, PAD)).view(b, c, hp * wp)  # (B, C, (H+8)*(W+8))
    dy = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator, device=dev)  # (B, 1) crop top
    dx = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator, device=dev)  # (B, 1) crop left
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=dev).bool()  # (B, 1)
    rows = dy + torch.arange(h, device=dev)  # (B, H) source rows
    cols = dx + torch.where(flip, torch.arange(w - 1, -1, -1, device=dev), torch.arange(w, device=dev))  # (B, W)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)  # (B, C, H*W)
    return padded.gather(2, index).view(b, c, h, w)


class DeviceLoader:
    """One epoch per iteration of `(x float (B, 3, 32, 32), y int64 (B,))`, with the whole split kept on
    `device` as uint8. train=True: a fresh seeded order each epoch, `augment` on every batch, last partial
    batch dropped (unless drop_last=False); train=False: the set in order, whole, no augmentation.

    A train loader is a stream: `state_dict()` taken between batches and `load_state_dict()` on a new loader
    continue it exactly (same order, same crops), mid-epoch too. Breaking out of a train epoch leaves the
    loader there: the next iteration finishes that epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        mean,
        std,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} must have one entry per image ({len(images)})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        self.drop_last = train if drop_last is None else drop_last
        if self.drop_last and len(labels) < batch_size:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {len(labels)} images, so no full batch exists; "
                "use a smaller batch_size or drop_last=False"
            )
        self.device = resolve_device(device)
        self.images = images.to(self.device)  # (N, 3, H, W) uint8
        self.labels = labels.to(self.device, torch.int64)  # (N,)
        self.batch_size = batch_size
        self.train = train
        self.channels_last = channels_last
        self.dtype = dtype
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = (1 / (255 * std_t)).to(self.device)  # x = u8 * scale + shift = (u8/255 - mean) / std
        self._shift = (-mean_t / std_t).to(self.device)
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch = 0  # epochs completed
        self._batch = 0  # next batch within the current epoch
        self._epoch_start: torch.Tensor | None = None  # generator state before this epoch's permutation

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self._train_epoch() if self.train else self._eval_epoch()

    def _eval_epoch(self):
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self._normalise(self.images[sl]), self.labels[sl]

    def _train_epoch(self):
        if self._batch >= len(self):  # the last epoch ended right where a state was taken
            self._end_epoch()
        if self._epoch_start is None:
            self._epoch_start = self.generator.get_state()
            order = self._permutation()
        else:  # resume mid-epoch: redraw this epoch's order from its start, then carry on
            current = self.generator.get_state()
            self.generator.set_state(self._epoch_start)
            order = self._permutation()
            self.generator.set_state(current)
        while self._batch < len(self):
            idx = order[self._batch * self.batch_size : (self._batch + 1) * self.batch_size]  # (B,)
            x = augment(self.images[idx], self.generator)
            self._batch += 1
            yield self._normalise(x), self.labels[idx]
        self._end_epoch()

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(len(self.labels), generator=self.generator, device=self.device)

    def _end_epoch(self) -> None:
        self.epoch += 1
        self._batch = 0
        self._epoch_start = None

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, H, W) -> dtype (B, 3, H, W)
        out = torch.addcmul(self._shift, x.to(torch.float32), self._scale).to(self.dtype)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def state_dict(self) -> dict:
        """Where the stream is: epochs done, next batch, generator states (all on the CPU)."""
        return {
            "n": len(self.labels),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "batch": self._batch,
            "epoch_start": None if self._epoch_start is None else self._epoch_start.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["n"], state["batch_size"]) != (len(self.labels), self.batch_size):
            raise ValueError(
                f"loader state is for {state['n']} images in batches of {state['batch_size']}, this loader has "
                f"{len(self.labels)} in batches of {self.batch_size}; resume with the same data and batch_size"
            )
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self._batch = state["batch"]
        self._epoch_start = state["epoch_start"]
        self.generator.set_state(state["generator"])


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
