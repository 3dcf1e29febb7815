"""datasets.py: the three sources, the on-disk cache, batched augmentation and the device loader."""
from __future__ import annotations

import os
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resviz import datasets
from resviz.datasets import DeviceLoader, augment, load

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------------------ augmentation
def _crops_of(image: torch.Tensor) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every (dy, dx, flipped) 32x32 crop of the 4-pixel zero-padded image, computed the slow way."""
    padded = torch.zeros((3, 40, 40), dtype=image.dtype)
    padded[:, 4:36, 4:36] = image
    out = []
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy : dy + 32, dx : dx + 32]
            out.append((dy, dx, False, crop))
            out.append((dy, dx, True, crop.flip(2)))
    return out


def test_augment_is_a_padded_crop_possibly_flipped(device):
    images = torch.randint(1, 256, (24, 3, 32, 32), dtype=torch.uint8)  # no zeros: the padding is visible
    g = torch.Generator(device=device).manual_seed(3)
    out = augment(images.to(device), g).cpu()
    assert out.shape == images.shape and out.dtype == torch.uint8
    seen = set()
    for image, result in zip(images, out):
        matches = [(dy, dx, fl) for dy, dx, fl, crop in _crops_of(image) if torch.equal(crop, result)]
        assert len(matches) == 1, "each output must be exactly one crop of the padded input"
        seen.add(matches[0])
    assert len(seen) > 12  # offsets and flips vary across the batch
    assert {fl for _, _, fl in seen} == {False, True}


def test_augment_offsets_cover_the_pad_range():
    images = torch.full((400, 3, 32, 32), 7, dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    zero_rows_top = (out[:, 0, :, 16] == 0).int().argmin(1)  # leading zero rows = 4 - dy
    zero_cols_left = (out[:, 0, 16, :] == 0).int().argmin(1)
    assert set(zero_rows_top.tolist()) == set(range(5))
    assert set(zero_cols_left.tolist()) <= set(range(5))


def test_augment_is_reproducible_from_the_seed(device):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, device=device)
    a = augment(images, torch.Generator(device=device).manual_seed(5))
    b = augment(images, torch.Generator(device=device).manual_seed(5))
    c = augment(images, torch.Generator(device=device).manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ------------------------------------------------------------------------------ the device loader
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _labelled_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is constant (i + 1): after any crop its largest value still names its label i."""
    labels = torch.arange(n)
    images = (labels + 1).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    return images, labels


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return ((x.float() * std + mean) * 255).round().to(torch.uint8)


def test_train_loader_keeps_labels_and_covers_a_permutation(device):
    images, labels = _labelled_images(100)
    loader = DeviceLoader(images, labels, batch_size=32, train=True, mean=MEAN, std=STD, device=device, seed=1)
    assert len(loader) == 3  # drop_last by default when training
    batches = list(loader)
    assert len(batches) == 3
    seen = []
    for x, y in batches:
        assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == torch.device(device).type
        u8 = _to_uint8(x)
        assert torch.equal(u8.amax((1, 2, 3)), (y + 1).to(torch.uint8))  # pixels and labels travel together
        seen += y.tolist()
    assert len(set(seen)) == 96 and seen != sorted(seen)
    assert loader.epoch == 1
    second = torch.cat([y for _, y in loader]).tolist()
    assert second != seen  # a fresh order each epoch


def test_eval_loader_is_in_order_whole_and_exactly_normalised(device):
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    loader = DeviceLoader(images, labels, batch_size=4, train=False, mean=MEAN, std=STD, device=device)
    assert len(loader) == 3
    xs, ys = zip(*loader)
    assert [len(y) for y in ys] == [4, 4, 2]
    assert torch.equal(torch.cat(ys).cpu(), labels)
    expected = (images.double() / 255 - torch.tensor(MEAN).double().view(1, 3, 1, 1)) / torch.tensor(STD).double().view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(torch.cat(xs).cpu().double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in loader]).cpu(), labels)  # every iteration starts afresh


def test_loader_options_and_reproducibility():
    images, labels = _labelled_images(64)
    kw = dict(batch_size=16, train=True, mean=MEAN, std=STD, seed=4)
    a = [x for x, _ in DeviceLoader(images, labels, **kw)]
    b = [x for x, _ in DeviceLoader(images, labels, **kw)]
    c = [x for x, _ in DeviceLoader(images, labels, **{**kw, "seed": 5})]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    loader = DeviceLoader(images, labels, **kw, channels_last=True, dtype=torch.bfloat16, drop_last=False)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert len(DeviceLoader(images[:50], labels[:50], **kw, drop_last=False)) == 4


@pytest.mark.parametrize("stop", [5, 8])  # mid-epoch, and exactly at an epoch's end
def test_state_dict_resumes_the_same_stream(stop):
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(40)
    kw = dict(batch_size=10, train=True, mean=MEAN, std=STD, seed=2)
    reference = DeviceLoader(images, labels, **kw)
    stream = [b for _ in range(3) for b in reference]  # 3 epochs of 4 batches

    first = DeviceLoader(images, labels, **kw)
    it = iter(first)
    for _ in range(stop):
        try:
            next(it)
        except StopIteration:
            it = iter(first)
            next(it)
    state = first.state_dict()
    resumed = DeviceLoader(images, labels, **{**kw, "seed": 99})  # the state carries the seed too
    resumed.load_state_dict(state)
    rest = [b for _ in range(3) for b in resumed][: len(stream) - stop]
    assert len(rest) == len(stream) - stop
    for (x, y), (x_ref, y_ref) in zip(rest, stream[stop:]):
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref)


def test_loader_bad_input():
    images, labels = _labelled_images(8)
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, 3, H, W\), got torch.float32"):
        DeviceLoader(images.float(), labels, batch_size=2, train=True, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="labels .* must have one entry per image"):
        DeviceLoader(images, labels[:3], batch_size=2, train=True, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        DeviceLoader(images, labels, batch_size=0, train=True, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="device='tpu9' is not a device; use cpu, cuda, cuda:N or auto"):
        DeviceLoader(images, labels, batch_size=2, train=True, mean=MEAN, std=STD, device="tpu9")
    with pytest.raises(ValueError, match="batch_size=16 is larger than the 8 images, so no full batch exists"):
        DeviceLoader(images, labels, batch_size=16, train=True, mean=MEAN, std=STD)
    assert len(DeviceLoader(images, labels, batch_size=16, train=True, mean=MEAN, std=STD, drop_last=False)) == 1
    state = DeviceLoader(images, labels, batch_size=4, train=True, mean=MEAN, std=STD).state_dict()
    with pytest.raises(ValueError, match="loader state is for 8 images in batches of 4, this loader has 8 in batches of 2"):
        DeviceLoader(images, labels, batch_size=2, train=True, mean=MEAN, std=STD).load_state_dict(state)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine; use cpu or auto"):
            DeviceLoader(images, labels, batch_size=2, train=True, mean=MEAN, std=STD, device="cuda")


# ------------------------------------------------------------------------------ digits
def test_digits_split_scaling_and_stats(tmp_path):
    from sklearn.datasets import load_digits

    d = load("digits", root=tmp_path)
    assert (len(d.train_labels), len(d.test_labels)) == (1437, 360)
    assert d.train_images.shape == (1437, 3, 32, 32) and d.train_images.dtype == torch.uint8
    assert d.train_labels.dtype == torch.int64 and d.classes == [str(i) for i in range(10)]
    per_class = torch.bincount(d.test_labels, minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # stratified: 360 / 10 per class, give or take one
    both = torch.cat([d.train_images, d.test_images])
    assert torch.equal(both[:, 0], both[:, 2]) and torch.equal(both[:, 0], both[:, 1])
    assert torch.equal(both[:, :, 1::4, 2::4], both[:, :, ::4, ::4])  # 4x4 blocks
    # the 8x8 originals, scaled 0..16 -> 0..255, are exactly the set of images (split, not altered)
    raw = load_digits()
    ours = both[:, 0, ::4, ::4].reshape(len(both), 64).double() * 16 / 255
    theirs = torch.from_numpy(raw.images.reshape(-1, 64))
    ours_sorted = sorted(map(tuple, ours.round().long().tolist()))
    assert ours_sorted == sorted(map(tuple, theirs.long().tolist()))
    labels_of = {}
    for img, label in zip(theirs.long().tolist(), raw.target.tolist()):
        labels_of.setdefault(tuple(img), set()).add(label)
    ours_labels = torch.cat([d.train_labels, d.test_labels]).tolist()
    assert all(lab in labels_of[tuple(img)] for img, lab in zip(ours.round().long().tolist(), ours_labels))
    # mean / std: per channel, on 0..1, from the train split only
    x = d.train_images.double() / 255
    torch.testing.assert_close(torch.tensor(d.mean, dtype=torch.float64), x.mean((0, 2, 3)), rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.tensor(d.std, dtype=torch.float64), x.std((0, 2, 3), unbiased=False), rtol=0, atol=1e-9)
    # fixed split: another root gives the same tensors
    again = load("digits", root=tmp_path / "other")
    assert torch.equal(again.test_images, d.test_images) and torch.equal(again.train_labels, d.train_labels)
    assert d.split("test")[0] is d.test_images
    with pytest.raises(ValueError, match="split='val' is unknown; use 'train' or 'test'"):
        d.split("val")


def test_unknown_spec():
    with pytest.raises(ValueError, match=r"dataset 'mnist' is unknown; use one of: digits, cifar10, imagefolder:PATH"):
        load("mnist")
    with pytest.raises(ValueError, match="dataset 'imagefolder:' is unknown"):
        load("imagefolder:")


# ------------------------------------------------------------------------------ the cache
def test_cache_is_used_then_rebuilt_when_corrupted(tmp_path):
    first = load("digits", root=tmp_path)
    cache = tmp_path / "resviz-digits.pt"
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    second = load("digits", root=tmp_path)
    assert cache.stat().st_mtime_ns == stamp  # read, not rewritten
    assert torch.equal(second.train_images, first.train_images) and second.mean == first.mean

    raw = bytearray(cache.read_bytes())  # flip bytes inside the image data: a CRC mismatch
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(255 - b for b in raw[middle : middle + 64])
    cache.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="resviz-digits.pt is unreadable .*; rebuilding it"):
        third = load("digits", root=tmp_path)
    assert torch.equal(third.train_images, first.train_images)

    cache.write_bytes(cache.read_bytes()[:5000])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        fourth = load("digits", root=tmp_path)
    assert torch.equal(fourth.test_images, first.test_images)
    assert load("digits", root=tmp_path) is not None and cache.stat().st_size > 5000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_unwritable_root_warns_and_still_loads(tmp_path):
    root = tmp_path / "a-file"
    root.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match=r"cannot write dataset cache .*resviz-digits.pt .*pass a writable root"):
        d = load("digits", root=root)
    assert len(d.test_labels) == 360


# ------------------------------------------------------------------------------ ImageFolder trees
def _write_tree(root: Path, classes=("cat", "dog", "emu"), per_class=3, seed=0) -> dict[str, list[np.ndarray]]:
    """A tiny tree: PNGs (lossless) and one JPEG and one odd-sized PNG per split."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "test"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i:02d}.png")
                written[f"{split}/{c}/{i:02d}.png"] = arr
        smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
        Image.fromarray(smooth).save(root / split / classes[0] / "zz.jpg", quality=95)
        written[f"{split}/{classes[0]}/zz.jpg"] = smooth
        Image.fromarray(np.full((48, 40, 3), 200, np.uint8)).save(root / split / classes[1] / "big.png")
        written[f"{split}/{classes[1]}/big.png"] = np.full((32, 32, 3), 200, np.uint8)
    return written


def test_imagefolder_tree(tmp_path):
    tree = tmp_path / "tree"
    written = _write_tree(tree)
    d = load(f"imagefolder:{tree}", root=tmp_path / "data")
    assert d.classes == ["cat", "dog", "emu"]
    assert len(d.train_labels) == len(d.test_labels) == 3 * 3 + 2
    # ImageFolder order: class by class, files sorted by name
    order = sorted(k for k in written if k.startswith("train/"))
    assert d.train_labels.tolist() == [["cat", "dog", "emu"].index(k.split("/")[1]) for k in order]
    for i, key in enumerate(order):
        expected = torch.from_numpy(written[key]).permute(2, 0, 1)
        got = d.train_images[i]
        if key.endswith(".jpg"):
            assert (got.int() - expected.int()).abs().float().mean() < 3  # lossy, but the same picture
        else:
            assert torch.equal(got, expected), key  # PNG exact; the 48x40 one resized to 32x32
    x = d.train_images.double() / 255
    torch.testing.assert_close(torch.tensor(d.mean, dtype=torch.float64), x.mean((0, 2, 3)), rtol=0, atol=1e-9)


def test_imagefolder_cache_follows_the_tree(tmp_path):
    tree = tmp_path / "tree"
    _write_tree(tree)
    root = tmp_path / "data"
    first = load(f"imagefolder:{tree}", root=root)
    caches = list(root.glob("resviz-imagefolder-*.pt"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    assert torch.equal(load(f"imagefolder:{tree}", root=root).train_images, first.train_images)
    assert caches[0].stat().st_mtime_ns == stamp  # a cache hit
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tree / "train" / "emu" / "new.png")
    changed = load(f"imagefolder:{tree}", root=root)  # a changed tree is decoded again
    assert len(changed.train_labels) == len(first.train_labels) + 1
    assert caches[0].stat().st_mtime_ns != stamp


def test_imagefolder_bad_input(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"imagefolder:.*nope: no such folder; give the path of a folder"):
        load(f"imagefolder:{missing}", root=tmp_path / "data")

    tree = tmp_path / "tree"
    _write_tree(tree)
    os.rename(tree / "test", tmp_path / "test-away")
    with pytest.raises(FileNotFoundError, match=r"has no test/ folder; an ImageFolder tree needs train/<class>/"):
        load(f"imagefolder:{tree}", root=tmp_path / "data")

    tree2 = tmp_path / "tree2"
    _write_tree(tree2)
    os.rename(tree2 / "test" / "emu", tree2 / "test" / "yak")
    with pytest.raises(
        ValueError,
        match=r"train/ and test/ hold different classes \(only in train: emu; only in test: yak\); give both splits",
    ):
        load(f"imagefolder:{tree2}", root=tmp_path / "data")

    tree3 = tmp_path / "tree3"
    _write_tree(tree3)
    (tree3 / "train" / "dog" / "notes.jpg").write_text("this is not a picture")
    with pytest.raises(ValueError, match=r"tree3/train/dog/notes.jpg is not an image .*; delete it or move it out"):
        load(f"imagefolder:{tree3}", root=tmp_path / "data")

    tree4 = tmp_path / "tree4"
    _write_tree(tree4)
    (tree4 / "test" / "cow").mkdir()
    (tree4 / "train" / "cow").mkdir()
    with pytest.raises(FileNotFoundError, match=r"a class folder in train/ holds no images .*add images to it"):
        load(f"imagefolder:{tree4}", root=tmp_path / "data")


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_real_cifar10_jpeg_tree(cifar_jpeg_tree, tmp_path):
    d = load(f"imagefolder:{cifar_jpeg_tree}", root=tmp_path, progress=False)
    assert (len(d.train_labels), len(d.test_labels)) == (50_000, 10_000)
    assert d.classes == CIFAR_CLASSES  # alphabetical order happens to be CIFAR-10's label order
    assert torch.bincount(d.train_labels).tolist() == [5000] * 10
    assert torch.bincount(d.test_labels).tolist() == [1000] * 10
    for got, want in zip(d.mean, (0.491, 0.482, 0.447)):
        assert abs(got - want) < 0.01
    for got, want in zip(d.std, (0.247, 0.243, 0.261)):
        assert abs(got - want) < 0.01


# ------------------------------------------------------------------------------ CIFAR-10 pickle batches
def _write_cifar_batches(root: Path, per_batch: int = 6, seed: int = 0) -> dict:
    """The CIFAR-10 python format exactly: pickled dicts with byte-string keys, data uint8 (N, 3072) CHW rows."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        entry = {
            b"batch_label": f"{name} of 6".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        out[name] = (data, labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return out


@pytest.fixture()
def refused_url(monkeypatch):
    """A mirror URL on a local port nobody listens on: a download attempt fails at once, never hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/cifar-10-python.tar.gz"
    monkeypatch.setenv(datasets.CIFAR10_URL_ENV, url)
    yield url
    sock.close()


def _check_cifar(d, written):
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    expected = torch.from_numpy(np.concatenate([b[0] for b in train])).reshape(-1, 3, 32, 32)
    assert torch.equal(d.train_images, expected)
    assert d.train_labels.tolist() == sum((b[1] for b in train), [])
    assert torch.equal(d.test_images, torch.from_numpy(written["test_batch"][0]).reshape(-1, 3, 32, 32))
    assert d.classes == CIFAR_CLASSES
    # CHW rows: the first 1024 bytes of a row are the red plane, row-major
    assert torch.equal(d.train_images[0, 0].reshape(-1), torch.from_numpy(train[0][0][0, :1024]))


def test_cifar10_from_the_extracted_batches(tmp_path, refused_url):
    written = _write_cifar_batches(tmp_path)
    d = load("cifar10", root=tmp_path)
    assert (len(d.train_labels), len(d.test_labels)) == (30, 6)
    _check_cifar(d, written)


def test_cifar10_from_the_archive_without_download(tmp_path, refused_url):
    src = tmp_path / "src"
    written = _write_cifar_batches(src)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    d = load("cifar10", root=root)  # a download attempt would fail: the URL is refused
    _check_cifar(d, written)
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar10_offline_says_where_to_put_the_archive(tmp_path, refused_url):
    with pytest.raises(
        RuntimeError,
        match=r"could not download CIFAR-10 from http://127.0.0.1:\d+/cifar-10-python.tar.gz .*put "
        r"cifar-10-python.tar.gz \(from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz\) or its extracted "
        r"cifar-10-batches-py/ into .*data/ and run again",
    ):
        load("cifar10", root=tmp_path / "data")


def test_cifar10_bad_files(tmp_path, refused_url):
    _write_cifar_batches(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"data_batch_3 is not a CIFAR-10 pickle batch .*delete .*cifar-10-batches-py"):
        load("cifar10", root=tmp_path)

    root = tmp_path / "archive"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz is not a readable CIFAR-10 archive .*delete it"):
        load("cifar10", root=root)
