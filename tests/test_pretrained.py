"""pretrained.py: akamaster checkpoints by name, path, search folder or hub cache; strict loading; bad files."""
from __future__ import annotations

import shutil
import socket

import pytest
import torch
import torch.nn.functional as F

from resviz import pretrained as pt
from resviz.models import cifar_resnet, count_parameters
from resviz.pretrained import AKAMASTER_FILES, pretrained

SHARED_NAMES = ["resnet20", "resnet32", "resnet44", "resnet56"]  # the files copied to ../shared


def reference_logits(state: dict, x: torch.Tensor) -> torch.Tensor:
    """akamaster's resnet.py graph written out functionally from the raw state dict (option-A shortcuts)."""
    sd = {k.removeprefix("module."): v for k, v in state.items()}

    def bn(h, name):
        return F.batch_norm(
            h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"],
            training=False, eps=1e-5,
        )

    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    in_planes = 16
    for stage, planes in ((1, 16), (2, 32), (3, 64)):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in sd:
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            h = F.relu(bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            h = bn(F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if stride != 1 or in_planes != planes:
                skip = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0.0)
            else:
                skip = out
            out = F.relu(h + skip)
            in_planes = planes
            i += 1
    out = F.avg_pool2d(out, out.size(3)).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_shared_checkpoints_load_strictly_and_match_the_reference(name, akamaster_dir):
    path = akamaster_dir / AKAMASTER_FILES[name]
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model = pretrained(path)
    depth = int(name.removeprefix("resnet"))
    assert model.spec.depth == depth and model.spec.shortcut == "A" and not model.training
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(depth))
    with torch.no_grad():
        got = model(x)
        want = reference_logits(raw, x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert got.std(0).max() > 0.1  # the logits depend on the input
    if name == "resnet20":
        assert count_parameters(model) == 269_722  # akamaster's table: 0.27M


def test_names_resolve_through_search_dirs_env_and_hub_cache(akamaster_dir, tmp_path, monkeypatch):
    expected = pretrained(akamaster_dir / AKAMASTER_FILES["resnet20"]).state_dict()

    def same(model):
        return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())

    assert same(pretrained("resnet20", search_dirs=[tmp_path / "empty", akamaster_dir]))
    assert same(pretrained("ResNet20", search_dirs=[akamaster_dir]))
    monkeypatch.setenv(pt.CHECKPOINTS_ENV, f"{tmp_path / 'empty'}:{akamaster_dir}")
    assert same(pretrained("resnet20"))
    monkeypatch.delenv(pt.CHECKPOINTS_ENV)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))  # what torch.hub.set_dir does, undone after the test
    (hub / "checkpoints").mkdir(parents=True)
    shutil.copy(akamaster_dir / AKAMASTER_FILES["resnet20"], hub / "checkpoints")
    assert pt.hub_path("resnet20") == hub / "checkpoints" / "resnet20-12fca82f.th"
    assert same(pretrained("resnet20"))  # found in the hub cache: no download


def _save_akamaster_style(model, path, prefix="module."):
    torch.save({"best_prec1": 12.5, "state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, path)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_own_checkpoint_round_trip(tmp_path, shortcut):
    torch.manual_seed(0)
    model = cifar_resnet(8, shortcut=shortcut, num_classes=7).eval()
    path = tmp_path / "r8.th"
    _save_akamaster_style(model, path)
    loaded = pretrained(path)
    assert loaded.spec.depth == 8 and loaded.spec.shortcut == shortcut and loaded.spec.num_classes == 7
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state dict without the prefix loads too
    assert pretrained(tmp_path / "bare.pt", depth=8).spec.depth == 8


def test_bad_names_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint 'resnet18' is unknown; use one of resnet20, resnet32, resnet44, "
                       r"resnet56, resnet110, resnet1202 or a .th file path"):
        pretrained("resnet18")
    with pytest.raises(FileNotFoundError, match=r"checkpoint file .*missing.th does not exist"):
        pretrained(tmp_path / "missing.th")
    with pytest.raises(ValueError, match=r"checkpoint .* is a folder; give a checkpoint file \(.th\) or a name"):
        pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'resnet20' is a ResNet-20, not depth=32"):
        pretrained("resnet20", depth=32)

    source = tmp_path / "resnet8.th"
    _save_akamaster_style(cifar_resnet(8), source)
    with pytest.raises(ValueError, match=r"resnet8.th holds a ResNet-8, not the requested depth=20; ask for depth=8"):
        pretrained(source, depth=20)
    truncated = tmp_path / "truncated.th"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.th is not a readable checkpoint, truncated or not a torch file"):
        pretrained(truncated)
    text = tmp_path / "notes.th"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.th is not a readable checkpoint"):
        pretrained(text)
    other = tmp_path / "other.th"
    torch.save({"epoch": torch.tensor(3)}, other)
    with pytest.raises(ValueError, match=r"other.th has no CIFAR ResNet layout .*akamaster layout"):
        pretrained(other)
    torch.save({"lr": 0.1}, other)
    with pytest.raises(ValueError, match=r"other.th holds no state dict of tensors"):
        pretrained(other)
    state = cifar_resnet(8).state_dict()
    state["linear.weight"] = torch.zeros(10, 32)  # a wrong shape
    torch.save(state, other)
    with pytest.raises(ValueError, match=r"other.th does not fit a ResNet-8 \(option A\): .*size mismatch for linear.weight"):
        pretrained(other)


def test_depth_mismatch_on_a_shared_file(akamaster_dir):
    with pytest.raises(ValueError, match=r"resnet20-12fca82f.th holds a ResNet-20, not the requested depth=32; "
                       r"ask for depth=20"):
        pretrained(akamaster_dir / AKAMASTER_FILES["resnet20"], depth=32)


def test_truncated_file_in_the_hub_cache(tmp_path, monkeypatch, akamaster_dir):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    source = akamaster_dir / AKAMASTER_FILES["resnet32"]
    (tmp_path / "checkpoints" / source.name).write_bytes(source.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"checkpoints/resnet32-d509ac18.th is not a readable checkpoint.*delete it"):
        pretrained("resnet32")


@pytest.fixture()
def refused_mirror(monkeypatch, tmp_path):
    """Hub dir in a temp folder and a mirror URL on a local port nobody listens on: fails at once."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/models/"
    monkeypatch.setenv(pt.URL_ENV, url)
    monkeypatch.delenv(pt.CHECKPOINTS_ENV, raising=False)
    yield url
    sock.close()


def test_download_failure_says_where_to_put_the_file(refused_mirror, tmp_path):
    with pytest.raises(
        RuntimeError,
        match=r"could not download resnet44-014dd654.th from http://127.0.0.1:\d+/models/resnet44-014dd654.th "
        r"\(.*\); without internet put resnet44-014dd654.th into .*/hub/checkpoints/ \(the torch hub cache\) "
        r"or into a folder named by \$RESVIZ_CHECKPOINTS",
    ):
        pretrained("resnet44")
    assert not list((tmp_path / "hub" / "checkpoints").glob("*.th"))  # nothing half-written left behind


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def test_offline_with_the_real_url(tmp_path, monkeypatch):
    """The default github URL on this offline machine (skipped where github.com resolves: no real download)."""
    if _resolves("github.com"):
        pytest.skip("github.com resolves here: this test would download a checkpoint")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.delenv(pt.URL_ENV, raising=False)
    monkeypatch.delenv(pt.CHECKPOINTS_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"could not download resnet1202-f3b1deed.th from https://github.com/"
                       r"akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet1202-f3b1deed.th"):
        pretrained("resnet1202")
