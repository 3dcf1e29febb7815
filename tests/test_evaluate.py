"""evaluate.py and `resviz evaluate`: accuracy and loss against a by-hand computation, the CLI, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from resviz import datasets
from resviz.cli import main
from resviz.evaluate import evaluate, load_model_for_eval
from resviz.models import cifar_resnet
from resviz.pretrained import AKAMASTER_FILES, AKAMASTER_MEAN, AKAMASTER_STD, pretrained

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)


def _by_hand(model, images, labels, mean, std):
    x = (images.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.double()(x)
    model.float()
    return (logits.argmax(1) == labels).double().mean().item(), F.cross_entropy(logits, labels).item()


def _trained_a_little(num_classes=10):
    """A ResNet-8 with BN statistics moved off their init, so eval mode matters."""
    torch.manual_seed(0)
    model = cifar_resnet(8, num_classes=num_classes)
    with torch.no_grad():
        model.train()(torch.randn(64, 3, 32, 32) * 2 + 1)
    return model


def test_evaluate_matches_a_by_hand_computation(device):
    model = _trained_a_little()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (23,), generator=g)
    want_acc, want_loss = _by_hand(model.eval(), images, labels, MEAN, STD)
    model.train()
    got = evaluate(model, images, labels, mean=MEAN, std=STD, batch_size=7, device=device, progress=False)
    assert set(got) == {"accuracy", "loss", "n"} and got["n"] == 23
    assert got["accuracy"] == pytest.approx(want_acc, abs=1e-12)
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert model.training  # the model's mode is restored


def test_evaluate_bad_input():
    model = _trained_a_little(num_classes=3)
    images = torch.zeros((4, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="labels go up to 5 but the model has 3 outputs; evaluate it on a dataset"):
        evaluate(model, images, torch.tensor([0, 1, 2, 5]), mean=MEAN, std=STD, progress=False)
    with pytest.raises(ValueError, match="evaluate got 0 images; pass a non-empty split"):
        evaluate(model, images[:0], torch.zeros(0, dtype=torch.int64), mean=MEAN, std=STD, progress=False)


@pytest.fixture()
def resnet8_file(tmp_path):
    """A ResNet-8 saved the way akamaster saved theirs ({"state_dict": {"module." + key: ...}})."""
    model = _trained_a_little()
    path = tmp_path / "resnet8.th"
    torch.save({"best_prec1": 10.0, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def test_load_model_for_eval(resnet8_file, tmp_path):
    model, mean, std = load_model_for_eval(resnet8_file)
    assert model.spec.depth == 8 and not model.training
    assert (mean, std) == (AKAMASTER_MEAN, AKAMASTER_STD)
    with pytest.raises(FileNotFoundError, match=r"--checkpoint .* is a folder without checkpoint.pt; pass a run"):
        load_model_for_eval(tmp_path)


def test_cli_json_is_one_line_and_matches_evaluate(resnet8_file, tmp_path, capsys):
    root = tmp_path / "data"
    rc = main(["evaluate", "--checkpoint", str(resnet8_file), "--dataset", "digits", "--root", str(root),
               "--device", "cpu", "--batch-size", "100", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("\n") == 1 and out.startswith('{"accuracy": ')
    got = json.loads(out)
    assert list(got) == ["accuracy", "loss", "n"] and got["n"] == 360
    data = datasets.load("digits", root=root)
    want = evaluate(pretrained(resnet8_file), data.test_images, data.test_labels, mean=AKAMASTER_MEAN,
                    std=AKAMASTER_STD, progress=False)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)

    rc = main(["evaluate", "--checkpoint", str(resnet8_file), "--dataset", "digits", "--root", str(root),
               "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and f"on digits test (360 images, cpu): top-1 accuracy {100 * want['accuracy']:.2f} %" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "resnet7", "--dataset", "digits"], "checkpoint 'resnet7' is unknown; use one of resnet20"),
        (["--checkpoint", "{ckpt}", "--dataset", "mnist"], "dataset 'mnist' is unknown; use one of: digits, cifar10"),
        (["--checkpoint", "{ckpt}", "--dataset", "digits", "--batch-size", "0"], "--batch-size 0 must be a positive"),
        (["--checkpoint", "{tmp}", "--dataset", "digits"], "is a folder without checkpoint.pt; pass a run folder"),
        (["--checkpoint", "{ckpt}", "--dataset", "imagefolder:{tmp}/none"], "no such folder"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, resnet8_file, tmp_path, capsys):
    args = [a.format(ckpt=resnet8_file, tmp=tmp_path) for a in args]
    rc = main(["evaluate", *args, "--root", str(tmp_path / "data"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("resviz: error: ") and err.count("\n") == 1 and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_without_cuda(resnet8_file, tmp_path, capsys):
    rc = main(["evaluate", "--checkpoint", str(resnet8_file), "--dataset", "digits", "--device", "cuda",
               "--root", str(tmp_path)])
    assert rc == 2
    assert capsys.readouterr().err == (
        "resviz: error: device='cuda': CUDA is not available on this machine; use cpu or auto\n"
    )


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_cli_subprocess_prints_no_traceback(tmp_path):
    truncated = tmp_path / "broken.th"
    truncated.write_bytes(b"PK\x03\x04 not a whole zip")
    proc = subprocess.run(
        [sys.executable, "-m", "resviz.cli", "evaluate", "--checkpoint", str(truncated), "--dataset", "digits",
         "--root", str(tmp_path / "data"), "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("resviz: error: ") and proc.stderr.count("\n") == 1
    assert "broken.th is not a readable checkpoint" in proc.stderr


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_resnet20_accuracy_floor_on_the_jpeg_copy(akamaster_dir, cifar_jpeg_tree):
    """ResNet-20 on every 5th image of the JPEG test set (2,000): above 75 % (about 81 % on all 10,000)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    classes, class_to_idx = find_classes(str(cifar_jpeg_tree / "test"))
    samples = make_dataset(str(cifar_jpeg_tree / "test"), class_to_idx, extensions=IMG_EXTENSIONS)[::5]
    images = datasets.decode_images([p for p, _ in samples], progress=False)
    labels = torch.tensor([c for _, c in samples])
    assert len(labels) == 2000 and torch.bincount(labels).tolist() == [200] * 10
    model = pretrained(akamaster_dir / AKAMASTER_FILES["resnet20"])
    result = evaluate(model, images, labels, mean=AKAMASTER_MEAN, std=AKAMASTER_STD, progress=False)
    assert result["n"] == 2000
    assert 0.75 < result["accuracy"] < 0.95
