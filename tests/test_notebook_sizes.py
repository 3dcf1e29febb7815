"""notebooks/sizes.py: the smoke switch, folders from the environment, the data-set choice, shared smoke runs.

Local copies (checkpoints, the CIFAR-10 JPEG copy) come only from environment variables; the tests point them
at ../shared (conftest's `dev_copies` and paths), the module itself never looks for that folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import sizes as ns  # notebooks/sizes.py (conftest puts notebooks/ on sys.path, as Jupyter's cwd does)
from resviz.sweeps import grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch, tmp_path):
    for key in (ns.SMOKE_ENV, ns.SIZE_ENV, ns.OUT_ENV, ns.DATA_ENV, ns.DATASET_ENV, ns.CHECKPOINTS_ENV,
                ns.CIFAR_JPEG_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(ns.OUT_ENV, str(tmp_path / "out"))
    monkeypatch.setenv(ns.DATA_ENV, str(tmp_path / "data"))
    return monkeypatch


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), (" YES ", True), ("on", True),
                                             ("", False), ("0", False), ("false", False), ("off", False)])
def test_smoke_switch(env, value, expected):
    env.setenv(ns.SMOKE_ENV, value)
    assert ns.smoke() is expected


def test_bad_switch_and_unknown_notebook(env):
    env.setenv(ns.SMOKE_ENV, "maybe")
    with pytest.raises(ValueError, match=r"RESVIZ_SMOKE='maybe' is not a switch; use RESVIZ_SMOKE=1"):
        ns.sizes("01_quickstart")
    env.setenv(ns.SMOKE_ENV, "1")
    with pytest.raises(ValueError, match=r"notebook '09_nothing' is unknown; use one of 01_quickstart, "):
        ns.sizes("09_nothing")


def test_every_notebook_in_smoke_mode_shares_the_same_tiny_runs(env, tmp_path):
    env.setenv(ns.SMOKE_ENV, "1")
    all_sizes = [ns.sizes(name) for name in ns.NOTEBOOKS]
    assert ns.sizes("01_quickstart.ipynb")["notebook"] == "01_quickstart"  # a file name works too
    ids = {tuple(c.run_id for c in grid(s["base"], depths=s["depths"], archs=s["archs"])) for s in all_sizes}
    assert len(ids) == 1 and len(next(iter(ids))) == 4  # plain/ResNet × 2 depths, trained once for all
    assert {s["base"] for s in all_sizes} == {all_sizes[0]["base"]}  # identical configs: train() skips done runs
    for s in all_sizes:
        assert s["smoke"] and s["dataset"] == "digits" and s["formats"] == ("html",) and not s["progress"]
        assert s["runs"] == tmp_path / "out" / "smoke-digits"
        assert s["figures"] == tmp_path / "out" / "figures" / s["notebook"]
        assert s["base"].root == str(tmp_path / "data") and s["base"].steps <= 20
    assert all_sizes[2]["images"] <= 64 and all_sizes[2]["checkpoints"]


def test_full_mode_sizes(env, tmp_path):
    s1, s2, s3, s4 = (ns.sizes(name) for name in ns.NOTEBOOKS)
    assert not s1["smoke"] and s1["dataset"] == "digits" and s1["formats"] == ("html", "png")
    assert s2["dataset"] == "digits" and "CIFAR-10 is not in" in s2["dataset_note"]
    assert "RESVIZ_DATASET=cifar10" in s2["dataset_note"]
    assert len(s2["depths"]) >= 3 and s2["base"].steps >= 400
    # 03 and 04 train a shallow and a deep net from 02's set, in 02's folder with 02's config: trained once
    for s in (s3, s4):
        assert set(s["depths"]) <= set(s2["depths"]) and len(s["depths"]) == 2
        assert s["runs"] == s2["runs"] and s["base"] == s2["base"]
    assert s3["checkpoints"] == ("resnet20", "resnet32", "resnet44", "resnet56") and s3["images"] == 1_000
    for s in (s1, s2, s3, s4):
        assert len(grid(s["base"], depths=s["depths"], archs=s["archs"])) == 2 * len(s["depths"])  # all valid


def test_cifar10_is_used_when_present(env, tmp_path):
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    s = ns.sizes("02_degradation")
    assert s["dataset"] == "cifar10" and s["base"].dataset == "cifar10"
    assert s["runs"].name == "depth-cifar10"
    assert s["base"].width == 16 and s["depths"] == (20, 32, 44, 56)
    assert ns.sizes("04_gradient_flow")["depths"] == (20, 56)
    assert ns.sizes("01_quickstart")["dataset"] == "digits"  # the quickstart is the built-in set's
    env.setenv(ns.SMOKE_ENV, "1")
    assert ns.sizes("02_degradation")["dataset"] == "digits"  # smoke: always the small set


def test_dataset_variable_wins(env, tmp_path):
    env.setenv(ns.DATASET_ENV, "imagefolder:/somewhere/cifar10-jpeg")
    s = ns.sizes("02_degradation")
    assert s["dataset"] == "imagefolder:/somewhere/cifar10-jpeg"
    assert "set by $RESVIZ_DATASET" in s["dataset_note"]
    assert s["runs"].name == "depth-if-cifar10-jpeg"


def test_default_folders_are_in_the_checkout(monkeypatch):
    for key in (ns.OUT_ENV, ns.DATA_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(ROOT / "notebooks")  # where Jupyter runs a notebook
    assert ns.project_root() == ROOT
    assert ns.out_folder() == ROOT / "runs" / "notebooks"  # git-ignored (/runs/)
    assert ns.data_root() == ROOT / "data"


def test_outside_a_checkout_folders_are_local(monkeypatch, tmp_path):
    for key in (ns.OUT_ENV, ns.DATA_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    assert ns.project_root() is None
    assert ns.out_folder() == tmp_path / "runs" / "notebooks"
    assert ns.data_root() == tmp_path / "data"


def test_checkpoint_folders_come_from_the_environment_only(monkeypatch, tmp_path, request):
    monkeypatch.chdir(ROOT / "notebooks")
    monkeypatch.delenv(ns.CHECKPOINTS_ENV, raising=False)
    assert ns.checkpoint_dirs() == []  # nothing found beside the checkout without the variable
    monkeypatch.setenv(ns.CHECKPOINTS_ENV, f"{tmp_path / 'missing'}{os.pathsep}{tmp_path}")
    assert ns.checkpoint_dirs() == [tmp_path]  # the folders named, those that exist
    akamaster = request.getfixturevalue("akamaster_dir")  # skips without the shared checkpoints
    monkeypatch.setenv(ns.CHECKPOINTS_ENV, str(akamaster))
    assert ns.checkpoint_dirs() == [akamaster]


# ---------------------------------------------------------------------------------------------
# the lab notebooks 05-08
# ---------------------------------------------------------------------------------------------
def test_lab_notebooks_in_smoke_mode_are_small_and_valid(env, tmp_path):
    env.setenv(ns.SMOKE_ENV, "1")
    s5, s6, s7, s8 = (ns.sizes(name) for name in ns.LAB_NOTEBOOKS)
    assert ns.ALL_NOTEBOOKS == ns.NOTEBOOKS + ns.LAB_NOTEBOOKS + ns.STREAM_NOTEBOOKS
    for s in (s5, s6, s7, s8):
        assert s["smoke"] and s["formats"] == ("html",) and not s["progress"]
        assert s["figures"] == tmp_path / "out" / "figures" / s["notebook"]
    norms = grid(s5["base"], depths=s5["depths"], archs=s5["archs"], norms=s5["norms"])
    assert len(norms) == 8 and {c.norm for c in norms} == {"batch", "layer", "group", "none"}
    assert s5["runs"] == tmp_path / "out" / "smoke-norms-digits" and s5["base"].steps <= 20
    assert max(s5["batch_sizes"]) <= s5["images"]  # batch_dependence needs that many images
    # 06 lesions 01-04's smoke runs (trained once) and one akamaster net on a few hundred images
    s3 = ns.sizes("03_response_std")
    assert (s6["runs"], s6["base"], s6["depths"]) == (s3["runs"], s3["base"], s3["depths"])
    assert s6["checkpoints"] == ("resnet20",) and s6["images"] <= 300 and max(s6["ks"]) <= 9
    assert s7["depths"] == (8, 20, 44) and s7["n_inputs"] <= 64 and s7["heatmap_depth"] in s7["depths"]
    branch = grid(s8["base"], depths=s8["depths"], archs=s8["archs"], norms=s8["norms"],
                  branch_inits=s8["branch_inits"])
    assert [c.branch_init for c in branch] == ["skipinit", "rezero", "fixup"] and {c.norm for c in branch} == {"none"}
    assert s8["runs"] == tmp_path / "out" / "smoke-branch-init-digits" and s8["init_depth"] <= 20


def test_lab_notebooks_full_mode(env, tmp_path):
    s5, s6, s7, s8 = (ns.sizes(name) for name in ns.LAB_NOTEBOOKS)
    assert s5["dataset"] == "digits" and s5["depths"] == (20,) and s5["base"].steps >= 400
    assert s5["runs"] == tmp_path / "out" / "norms-digits" and s5["formats"] == ("html", "png")
    s2 = ns.sizes("02_degradation")
    assert s6["runs"] == s2["runs"] and set(s6["depths"]) <= set(s2["depths"]) and s6["base"] == s2["base"]
    assert s6["checkpoints"] == ("resnet20", "resnet56") and s6["images"] >= 1_000 and max(s6["ks"]) <= 27
    assert s7["depths"][-1] >= 56 and s7["n_inputs"] >= 256
    assert s8["init_depth"] >= 56 and s8["seeds"] >= 2 and s8["depths"] == (20,)
    assert s8["base"].lr == ns.BRANCH_INIT_LR < s5["base"].lr  # unnormalised nets: a smaller peak learning rate
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    s8 = ns.sizes("08_signal_propagation")
    assert s8["dataset"] == "cifar10" and s8["runs"].name == "branch-init-cifar10" and s8["base"].width == 16


def test_lesion_test_set_prefers_cifar_images(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no JPEG copy named by the environment
    spec, note = ns.lesion_test_set(tmp_path / "data")
    assert spec == "digits" and "near chance" in note and "RESVIZ_DATASET=cifar10" in note
    env.setenv(ns.DATASET_ENV, "digits")  # the digits are not a test set for CIFAR-10 nets: ignored
    assert ns.lesion_test_set(tmp_path / "data")[0] == "digits"
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    assert ns.lesion_test_set(tmp_path / "data")[0] == "cifar10"
    env.setenv(ns.DATASET_ENV, "imagefolder:/x/cifar-jpeg")
    assert ns.lesion_test_set(tmp_path / "data") == ("imagefolder:/x/cifar-jpeg",
                                                     "imagefolder:/x/cifar-jpeg (set by $RESVIZ_DATASET)")


def test_lesion_test_set_uses_the_jpeg_copy_named_by_the_environment(env, tmp_path, monkeypatch, cifar_jpeg_archive):
    monkeypatch.chdir(ROOT / "notebooks")
    archive = cifar_jpeg_archive
    assert ns.lesion_test_set(tmp_path / "data")[0] == "digits"  # without the variable: no copy is looked for
    env.setenv(ns.CIFAR_JPEG_ENV, str(archive))
    spec, note = ns.lesion_test_set(tmp_path / "data")  # no CIFAR-10 in this data folder
    assert spec == str(archive) and "JPEG copy" in note and "not a CIFAR-10 number" in note
    env.setenv(ns.SMOKE_ENV, "1")
    assert ns.sizes("06_lesion")["test_set"] == str(archive)  # even in smoke mode: real images
    tree = tmp_path / "cifar10-jpeg"
    (tree / "test").mkdir(parents=True)  # an extracted copy is read as an image folder
    env.setenv(ns.CIFAR_JPEG_ENV, str(tree))
    assert ns.lesion_test_set(tmp_path / "data")[0] == f"imagefolder:{tree}"
