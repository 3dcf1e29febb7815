"""Fig. 7 on akamaster's trained CIFAR ResNets, in eval mode, on real CIFAR-10 test images.

He et al. (Sec. 4.2, Fig. 7): "the deeper ResNet has smaller magnitudes of responses". That is a statement
across depths; inside one trained ResNet-56 the responses do not fall with depth on these images (measured:
Spearman rho ~ 0 against layer index, stage 3 mean 0.47 > stage 1 mean 0.42), so the test checks the
across-depth form, plus every value against a layer-by-layer computation.

Images: 4 per class from the test split of the shared JPEG copy, read straight from the tarball (a couple of
seconds; unpacking the whole tree takes ~20 s), normalised as akamaster's trainer does.
"""
from __future__ import annotations

import collections
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import by_hand, std, values

from resviz.models import cifar_resnet
from resviz.probes import Recorder

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESVIZ_SHARED", ROOT.parent / "shared"))
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # akamaster trainer.py


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny nets on one thread


@pytest.fixture(scope="module")
def cifar_test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """(40, 3, 32, 32) normalised float images, 4 per class, and their labels."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"CIFAR-10 JPEG copy not found at {CIFAR_JPEG}")
    from PIL import Image

    got = collections.defaultdict(list)
    with tarfile.open(CIFAR_JPEG) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] == "test" and len(got[parts[1]]) < 4:
                got[parts[1]].append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                if sum(map(len, got.values())) == 40:
                    break
    x = torch.tensor(np.stack([a for c in CLASSES for a in got[c]])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x, torch.arange(10).repeat_interleave(4)


def akamaster(directory: Path, depth: int):
    files = sorted(directory.glob(f"resnet{depth}-*.th"))
    if not files:
        pytest.skip(f"no resnet{depth} checkpoint in {directory}")
    state = torch.load(files[0], map_location="cpu", weights_only=False)["state_dict"]
    model = cifar_resnet(depth)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    return model.eval()


def test_trained_resnets_responses_shrink_with_depth(akamaster_dir, cifar_test_images):
    x, labels = cifar_test_images
    means = {}
    for depth in (20, 32, 44, 56):
        model = akamaster(akamaster_dir, depth)
        with Recorder(model, every=1, metrics=["response_std"]) as rec, torch.no_grad():
            logits = model(x)
            rec.step()
        got = values(rec.frame(), "response_std")
        assert len(got) == depth - 1  # the stem and the 2 3x3 layers of each of the (depth - 2) / 2 blocks
        means[depth] = float(np.mean(list(got.values())))
        assert (logits.argmax(1) == labels).float().mean() > 0.6  # the checkpoint and the inputs are right
        if depth == 56:
            with torch.no_grad():
                ref, _ = by_hand(model, x)
            for name, v in got.items():
                assert v == pytest.approx(std(ref[name]), rel=2e-5), name
    assert means[20] > means[32] > means[44] > means[56], means  # measured 0.68 > 0.56 > 0.48 > 0.43
