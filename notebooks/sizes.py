"""What the notebooks run: a smoke version (RESVIZ_SMOKE=1 or RESVIZ_SIZE=smoke, seconds on a CPU), a medium one
(RESVIZ_SIZE=medium, 02-04 only) or the full one, and where.

This file sits beside the notebooks, not in the package: Jupyter runs a notebook in its own folder, so a
notebook's first cell says `import sizes` and calls `sizes.sizes("01_quickstart")`, which returns everything
the notebook needs, so the notebook itself holds no logic:
    smoke, size    whether the smoke version runs, and which size runs ("smoke", "medium", "full"): RESVIZ_SMOKE
                   read as a switch ("1"/"true"/"yes"/"on"; unset, "0"/"false"/"no"/"off") wins, else
                   RESVIZ_SIZE (default "full"); medium exists for 02-04, elsewhere it runs the full size
    base, depths, archs   the runs: `sweeps.grid(s["base"], depths=s["depths"], archs=s["archs"])`
    runs, figures  folders under $RESVIZ_OUT (default `<project>/runs/notebooks`): runs are grouped by the
                   experiment they belong to and the data set, so notebooks that need the same runs train them
                   once (e.g. `smoke-digits`, `depth-cifar10`), and a folder never mixes data sets
    data_root      $RESVIZ_DATA (default `<project>/data`): datasets and their caches
    dataset, dataset_note   which data set and why, in words (the notebook prints it)
    formats, progress       export formats; tqdm bars on or off
    workers        runs trained side by side by `sweeps.run_sweep` (1 in smoke mode; else as `make demo`)
    checkpoints, checkpoint_dirs, images   (03, 06) akamaster names, local folders holding them, test images
    test_set, test_set_note   (03, 06) the CIFAR-10 test split for the akamaster nets (`lesion_test_set`), named
The lab notebooks (05-08, `LAB_NOTEBOOKS`) add their own keys (see `_lab_sizes`): 05 `norms`, `batch_sizes`,
`draws`; 06 `test_set`, `test_set_note`, `ks`, `draws`; 07 the shattering grid (`depths`, `width`, `n_inputs`,
`image_size`, `seeds`, `heatmap_depth`); 08 the nets at init (`init_depth`, `variants`, ...) and `branch_inits`.

Data sets: $RESVIZ_DATASET ("digits", "cifar10" (downloads if absent), "imagefolder:PATH") wins; otherwise the
degradation, response-std, gradient, normalisation and branch-init notebooks use CIFAR-10 when it is already in
`data_root`, else the built-in digits, and smoke mode always uses the digits. The lesion notebook's test set for
the akamaster nets (`lesion_test_set`) is a CIFAR-10 test split even in smoke mode when one is local: CIFAR-10 in
`data_root`, else the JPEG copy named by $RESVIZ_CIFAR_JPEG (a `test/` folder tree or its .tar.gz, read in place).
Checkpoints: the folders named by $RESVIZ_CHECKPOINTS (also read by `resviz.pretrained`), else torch hub's
cache / download. Local copies come only from these variables: nothing here looks for folders of its own.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from resviz import datasets, pretrained, sweeps
from resviz.demo import DEMO
from resviz.train import TrainConfig
from resviz.train.config import dataset_slug

SMOKE_ENV = "RESVIZ_SMOKE"
SIZE_ENV = "RESVIZ_SIZE"  # "smoke" | "medium" | "full" (default full; RESVIZ_SMOKE=1 means smoke and wins)
SIZES = ("smoke", "medium", "full")
OUT_ENV = "RESVIZ_OUT"
DATA_ENV = "RESVIZ_DATA"
DATASET_ENV = "RESVIZ_DATASET"
CHECKPOINTS_ENV = pretrained.CHECKPOINTS_ENV  # "RESVIZ_CHECKPOINTS": folders holding akamaster's .th files
CIFAR_JPEG_ENV = "RESVIZ_CIFAR_JPEG"  # a CIFAR-10 JPEG copy: a train/ and test/ tree, or its .tar.gz
NOTEBOOKS = ("01_quickstart", "02_degradation", "03_response_std", "04_gradient_flow")
LAB_NOTEBOOKS = ("05_layer_norm", "06_lesion", "07_shattered_gradients", "08_signal_propagation")
MEDIUM_NOTEBOOKS = ("02_degradation", "03_response_std", "04_gradient_flow")  # the others: medium = full
STREAM_NOTEBOOKS = ("09_residual_streams",)  # timm / Hugging Face models, own sizes (`_stream_sizes`)
ALL_NOTEBOOKS = NOTEBOOKS + LAB_NOTEBOOKS + STREAM_NOTEBOOKS
ARCHS = ("plain", "resnet")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

# Smoke: the same four tiny runs for every notebook (trained once when the notebooks share RESVIZ_OUT).
SMOKE_BASE = dataclasses.replace(
    DEMO, steps=12, batch_size=32, warmup_steps=4, log_every=4, eval_every=12, checkpoint_every=12,
    record_every=3, device="auto",
)
SMOKE_DEPTHS = (8, 14)
# Full, digits: He et al.'s recipe shrunk to a CPU (width 8, the same schedule and warm-up for every net).
DIGITS_BASE = dataclasses.replace(
    DEMO, steps=800, log_every=20, eval_every=100, checkpoint_every=100, record_every=10, device="auto",
)
DIGITS_DEPTHS = (8, 20, 44)
# Full, CIFAR-10: the paper's net (width 16, batch 128, lr 0.1, wd 1e-4) for a quarter of its 64k
# iterations, milestones scaled (lr / 10 at 8k and 12k): the depth ordering of Fig. 6 is there by then.
CIFAR_BASE = TrainConfig(steps=16_000, record_every=100, log_every=100, eval_every=1_000, checkpoint_every=1_000)
CIFAR_DEPTHS = (20, 32, 44, 56)
# Medium (RESVIZ_SIZE=medium), 02-04: between smoke and full, `make demo`'s nets and steps (digits) or an eighth
# of the full CIFAR-10 runs, at the shallowest and deepest depth, so a laptop CPU finishes in minutes.
MEDIUM_BASE = dataclasses.replace(DIGITS_BASE, steps=400, eval_every=40, checkpoint_every=40)
MEDIUM_CIFAR_BASE = dataclasses.replace(CIFAR_BASE, steps=2_000, record_every=50, log_every=50, eval_every=250,
                                        checkpoint_every=250)
AKAMASTER_FULL = ("resnet20", "resnet32", "resnet44", "resnet56")  # add "resnet110", "resnet1202" (downloads)
AKAMASTER_SMOKE = ("resnet20", "resnet56")
# 05: every normalisation, plain and ResNet, one depth; the batch-size sweep of BN vs LN.
LAB_NORMS = ("batch", "layer", "group", "none")
# 06: the akamaster nets lesioned on 2,000 test images (~15 min on 2 CPU cores; all 10,000: ~1 h).
LESION_FULL = ("resnet20", "resnet56")
LESION_SMOKE = ("resnet20",)
# 08: normalisation-free residual nets with a learnable branch scale, trained like the others but at a peak
# learning rate of 0.02: on the digits (depth 20, width 8) lr 0.1 made ReZero and Fixup diverge (non-finite loss
# by step 200 and 140; SkipInit trained) and lr 0.05 left Fixup at chance, while at 0.02 all three train.
BRANCH_INITS = ("skipinit", "rezero", "fixup")
BRANCH_INIT_LR = 0.02
FAST_LR = 0.1  # 08 also trains the branch inits at He et al.'s peak lr, to show which of them diverge there


def smoke() -> bool:
    """Whether the small version runs: $RESVIZ_SMOKE=1 or $RESVIZ_SIZE=smoke (see `size`)."""
    return size() == "smoke"


def _smoke_switch() -> bool:
    """$RESVIZ_SMOKE read as a switch."""
    raw = os.environ.get(SMOKE_ENV, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{SMOKE_ENV}={raw!r} is not a switch; use {SMOKE_ENV}=1 for the small version, 0 or unset for the full one"
    )


def size() -> str:
    """"smoke", "medium" or "full": "smoke" under $RESVIZ_SMOKE=1 (the test suite's switch wins), else
    $RESVIZ_SIZE, else "full"."""
    raw = os.environ.get(SIZE_ENV, "")
    value = raw.strip().lower()
    if value and value not in SIZES:
        raise ValueError(f"{SIZE_ENV}={raw!r} is not a size; use one of {', '.join(SIZES)}")
    return "smoke" if _smoke_switch() else (value or "full")


def demo_runs(root: Path | None = None) -> tuple[Path, TrainConfig] | None:
    """`make demo`'s finished runs (`<project>/runs/demo`) and the base config that names them, or None: 01
    reuses them instead of training the same four nets again."""
    from resviz import runfolder, runs
    from resviz.demo import DEMO_DEPTHS, DEMO_OUT, demo_configs

    folder = (root or project_root() or Path.cwd()) / DEMO_OUT
    try:
        status = runs.load(folder).status
    except (FileNotFoundError, ValueError):
        return None
    done = status[status["status"].astype(str) == "done"]
    if len(done) < 2 * len(DEMO_DEPTHS):
        return None
    config = runfolder.read_config(Path(done["folder"].iloc[0]))
    base = dataclasses.replace(DEMO, root=str(config.get("root", DEMO.root)), device=str(config.get("device", "cpu")))
    skip = {"run_id", "versions", *TrainConfig.RESUME_SAFE}
    for c in demo_configs(root=base.root):
        stored = folder / c.run_id
        if c.run_id not in set(done["run_id"]) or not stored.is_dir():
            return None
        old, new = runfolder.read_config(stored), dataclasses.replace(c, device=base.device).to_dict()
        if any(old.get(k) != v for k, v in new.items() if k not in skip):
            return None  # not `make demo`'s current runs (an old smoke demo, other settings): train 01's own
    return folder, base


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The resviz checkout holding `start` (default: the working directory), or None outside one."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        meta = folder / "pyproject.toml"
        if meta.is_file() and (folder / "resviz").is_dir() and 'name = "resviz"' in meta.read_text(errors="ignore"):
            return folder
    return None


def out_folder() -> Path:
    """$RESVIZ_OUT, else `<project>/runs/notebooks` (git-ignored), else `./runs/notebooks`."""
    if os.environ.get(OUT_ENV):
        return Path(os.environ[OUT_ENV]).expanduser()
    return (project_root() or Path.cwd()) / "runs" / "notebooks"


def data_root() -> Path:
    """$RESVIZ_DATA, else `<project>/data` (git-ignored), else `./data`."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return (project_root() or Path.cwd()) / "data"


def checkpoint_dirs() -> list[Path]:
    """The existing folders named by $RESVIZ_CHECKPOINTS (os.pathsep-separated), where akamaster files may be."""
    named = [Path(d).expanduser() for d in os.environ.get(CHECKPOINTS_ENV, "").split(os.pathsep) if d]
    return [d for d in named if d.is_dir()]


def cifar_jpeg_copy() -> Path | None:
    """The CIFAR-10 JPEG copy named by $RESVIZ_CIFAR_JPEG (a folder tree or an archive), if it exists."""
    raw = os.environ.get(CIFAR_JPEG_ENV, "").strip()
    path = Path(raw).expanduser() if raw else None
    return path if path is not None and path.exists() else None


def cifar_present(root: str | os.PathLike) -> bool:
    root = Path(root)
    return ((root / datasets.CIFAR10_FOLDER).is_dir() or (root / datasets.CIFAR10_ARCHIVE).is_file()
            or (root / "resviz-cifar10.pt").is_file())


def choose_dataset(*, prefer_cifar: bool, is_smoke: bool, root: str | os.PathLike) -> tuple[str, str]:
    """(dataset spec, a sentence saying which and why)."""
    env = os.environ.get(DATASET_ENV, "").strip()
    if env:
        return env, f"{env} (set by ${DATASET_ENV})"
    digits = "the built-in digits (scikit-learn's 8×8 handwritten digits, upscaled to 32×32)"
    if not prefer_cifar:
        return "digits", digits
    if is_smoke:
        return "digits", f"{digits}: smoke mode ({SMOKE_ENV}=1) always uses them"
    if cifar_present(root):
        return "cifar10", f"CIFAR-10 from {root}"
    note = (f"{digits}: CIFAR-10 is not in {root}; set {DATASET_ENV}=cifar10 to download it (170 MB) or "
            f"{DATASET_ENV}=imagefolder:PATH for a train/ and test/ folder tree")
    copy = cifar_jpeg_copy()
    if copy is not None and copy.is_dir():
        note += f" (a JPEG copy is at {copy}: pass imagefolder:{copy})"
    elif copy is not None:
        note += f" (a JPEG copy is at {copy}: extract it and pass imagefolder:<folder>)"
    return "digits", note


def lesion_test_set(root: str | os.PathLike) -> tuple[str, str]:
    """(test-set spec for `resviz.analysis.lesion.load_test_set`, a sentence saying which and why) for nets
    trained on CIFAR-10: $RESVIZ_DATASET unless it is the digits, CIFAR-10 in `root`, the JPEG copy named by
    $RESVIZ_CIFAR_JPEG (an extracted tree, or the archive read in place), else the digits (saying why that is
    poor)."""
    env = os.environ.get(DATASET_ENV, "").strip()
    if env and env != "digits":
        return env, f"{env} (set by ${DATASET_ENV})"
    if cifar_present(root):
        return "cifar10", f"CIFAR-10's test split from {root}"
    jpeg = "lossy, so errors run a few points above CIFAR-10's: not a CIFAR-10 number"
    copy = cifar_jpeg_copy()
    if copy is not None and (copy / "test").is_dir():
        return f"imagefolder:{copy}", f"the CIFAR-10 JPEG copy at {copy} ({jpeg})"
    if copy is not None and copy.is_file():
        return str(copy), f"the CIFAR-10 JPEG copy {copy}, test split read from the archive ({jpeg})"
    return "digits", ("the built-in digits: no CIFAR-10 here, so the akamaster nets (trained on CIFAR-10) are near "
                      f"chance; set {DATASET_ENV}=cifar10 (downloads 170 MB) or {DATASET_ENV}=imagefolder:PATH")


def _name(notebook: str) -> str:
    name = Path(str(notebook)).name.removesuffix(".ipynb")
    if name not in ALL_NOTEBOOKS:
        raise ValueError(f"notebook {notebook!r} is unknown; use one of {', '.join(ALL_NOTEBOOKS)}")
    return name


def sizes(notebook: str) -> dict:
    """Everything notebook `notebook` ("01_quickstart" .. "09_residual_streams") runs at the size `size()` names
    (small under RESVIZ_SMOKE=1 or RESVIZ_SIZE=smoke); "size" says which size that is for this notebook."""
    name = _name(notebook)
    chosen = size()
    is_smoke = chosen == "smoke"
    out, root = out_folder(), data_root()
    if name in LAB_NOTEBOOKS:  # no medium size: medium runs the full one, and says so in "size"
        return {**_lab_sizes(name, is_smoke, out, root), "size": "smoke" if is_smoke else "full"}
    if name in STREAM_NOTEBOOKS:
        return {**_stream_sizes(name, is_smoke, out, root), "size": "smoke" if is_smoke else "full"}
    spec, note = choose_dataset(prefer_cifar=name != "01_quickstart", is_smoke=is_smoke, root=root)
    medium = chosen == "medium" and name in MEDIUM_NOTEBOOKS
    if is_smoke:
        base, depths, group = SMOKE_BASE, SMOKE_DEPTHS, "smoke"
    elif name == "01_quickstart":
        base, depths, group = DEMO, (8, 44), "quickstart"
    elif medium:
        base, depths, group = (MEDIUM_BASE, (8, 44), "medium") if spec == "digits" else (MEDIUM_CIFAR_BASE,
                                                                                          (20, 56), "medium")
    elif spec == "digits":
        base, depths, group = DIGITS_BASE, DIGITS_DEPTHS, "depth"
    else:
        base, depths, group = CIFAR_BASE, CIFAR_DEPTHS, "depth"
    if name in ("03_response_std", "04_gradient_flow") and not is_smoke:
        depths = (depths[0], depths[-1])  # shallow vs deep, a subset of 02's runs (trained once)
    base = dataclasses.replace(base, dataset=spec, root=str(root), device="auto")
    reuse = demo_runs() if name == "01_quickstart" and not is_smoke else None
    s = {
        "notebook": name,
        "smoke": is_smoke,
        "dataset": spec,
        "dataset_note": note,
        "base": base,
        "depths": depths,
        "archs": ARCHS,
        "runs": out / f"{group}-{dataset_slug(spec)}",  # one data set per folder: runs of a group compare
        "figures": out / "figures" / name,
        "data_root": root,
        "formats": ("html",) if is_smoke else ("html", "png"),  # PNG starts a Chromium: seconds
        "progress": not is_smoke,
        "workers": 1 if is_smoke else sweeps.side_by_side_workers(),  # runs side by side, as `make demo`
        "size": "medium" if medium else chosen if is_smoke else "full",  # the size that runs (01: no medium)
    }
    if reuse is not None:  # `make demo` trained these four nets already: use them, train nothing
        s.update(runs=reuse[0], base=reuse[1], depths=(8, 44))
    if name == "03_response_std":
        s["checkpoints"] = AKAMASTER_SMOKE if is_smoke else AKAMASTER_FULL
        s["checkpoint_dirs"] = checkpoint_dirs()
        s["images"] = 32 if is_smoke else 1_000
        # the akamaster nets were trained on CIFAR-10: their Fig. 7 is measured on a CIFAR-10 test split, named
        s["test_set"], s["test_set_note"] = lesion_test_set(root)
    return s


def _lab_sizes(name: str, is_smoke: bool, out: Path, root: Path) -> dict:
    """Sizes of the lab notebooks 05-08 (same common keys as `sizes`)."""
    s = {"notebook": name, "smoke": is_smoke, "data_root": root, "figures": out / "figures" / name,
         "formats": ("html",) if is_smoke else ("html", "png"), "progress": not is_smoke,
         "workers": 1 if is_smoke else sweeps.side_by_side_workers()}
    if name == "07_shattered_gradients":  # no data set, no training: nets at initialisation on a line of images
        s.update(dataset="", dataset_note="no data set: Gaussian images on a line, nets at initialisation")
        if is_smoke:
            s.update(depths=(8, 20, 44), width=8, n_inputs=64, image_size=16, seeds=1, heatmap_depth=20,
                     line_depths=(1, 4, 16), line_width=32, line_seeds=2, line_n=64, panel_seeds=2)
        else:  # the panels' train-mode derivatives take a 256 x 256 Jacobian per net: minutes for 3 seeds
            s.update(depths=(8, 14, 20, 32, 56), width=16, n_inputs=256, image_size=32, seeds=2, heatmap_depth=56,
                     line_depths=(1, 2, 4, 8, 16, 24, 50), line_width=200, line_seeds=10, line_n=256,
                     panel_seeds=3)
        return s
    spec, note = choose_dataset(prefer_cifar=True, is_smoke=is_smoke, root=root)
    if is_smoke:
        base, group = SMOKE_BASE, "smoke"
    elif spec == "digits":
        base, group = DIGITS_BASE, "depth"
    else:
        base, group = CIFAR_BASE, "depth"
    base = dataclasses.replace(base, dataset=spec, root=str(root), device="auto")
    slug = dataset_slug(spec)
    s.update(dataset=spec, dataset_note=note, base=base, archs=ARCHS)
    if name == "05_layer_norm":
        depth = 8 if is_smoke else 20
        s.update(depths=(depth,), norms=LAB_NORMS, runs=out / f"{'smoke-' if is_smoke else ''}norms-{slug}",
                 invariance_seed=0, images=32 if is_smoke else 256, draws=3 if is_smoke else 10,
                 batch_sizes=(1, 2, 4, 8, 16) if is_smoke else (1, 2, 4, 8, 16, 32, 64, 128))
    elif name == "06_lesion":
        test_set, test_note = lesion_test_set(root)
        depths = SMOKE_DEPTHS if is_smoke else ((DIGITS_DEPTHS if spec == "digits" else CIFAR_DEPTHS)[0],
                                                (DIGITS_DEPTHS if spec == "digits" else CIFAR_DEPTHS)[-1])
        s.update(depths=depths, runs=out / f"{group}-{slug}",  # your runs: 03's and 04's (trained once)
                 checkpoints=LESION_SMOKE if is_smoke else LESION_FULL, checkpoint_dirs=checkpoint_dirs(),
                 test_set=test_set, test_set_note=test_note, images=200 if is_smoke else 2_000,
                 ks=(1, 2, 4) if is_smoke else (1, 2, 4, 8, 12, 16), draws=2 if is_smoke else 5)
    else:  # 08_signal_propagation
        s.update(init_depth=14 if is_smoke else 56, variants=("BN-ResNet", "ResNet, no norm", "SkipInit", "ReZero",
                                                             "Fixup"),
                 width=8 if is_smoke else 16, n_images=32 if is_smoke else 64, image_size=16 if is_smoke else 32,
                 seeds=1 if is_smoke else 4, branch_inits=BRANCH_INITS, norms=("none",), archs=("resnet",),
                 depths=(8,) if is_smoke else ((20,) if spec == "digits" else (56,)),
                 base=dataclasses.replace(base, lr=BRANCH_INIT_LR),
                 runs=out / f"{'smoke-' if is_smoke else ''}branch-init-{slug}",
                 # the same nets at He et al.'s lr 0.1 (Fixup with its official recipe): train or diverge?
                 base_fast=dataclasses.replace(base, lr=FAST_LR),
                 runs_fast=out / f"{'smoke-' if is_smoke else ''}branch-init-lr{FAST_LR:g}-{slug}")
    return s


def _stream_sizes(name: str, is_smoke: bool, out: Path, root: Path) -> dict:
    """09: a timm ResNet and ViT on the digits upscaled, a byte-level GPT-2 on the standard library's source."""
    steps, every = (6, 3) if is_smoke else (600, 50)
    return {"notebook": name, "smoke": is_smoke, "data_root": root, "figures": out / "figures" / name,
            "formats": ("html",) if is_smoke else ("html", "png"), "progress": not is_smoke,
            "dataset": "digits", "dataset_note": "the built-in digits, upscaled; the Python standard library's source",
            "steps": steps, "every": every, "side": 32, "batch": 16 if is_smoke else 64,
            "cnn": "resnet18" if is_smoke else "resnet50",
            "vit": dict(img_size=32, patch_size=8, depth=3 if is_smoke else 12),
            "gpt2": dict(layers=2 if is_smoke else 6, width=32 if is_smoke else 128, window=32 if is_smoke else 128,
                         batch=8 if is_smoke else 32, corpus_bytes=200_000 if is_smoke else 5_000_000,
                         steps=steps, every=every)}


__all__ = ["ALL_NOTEBOOKS", "LAB_NOTEBOOKS", "MEDIUM_NOTEBOOKS", "NOTEBOOKS", "checkpoint_dirs", "choose_dataset", "cifar_jpeg_copy",
           "data_root", "demo_runs", "lesion_test_set", "out_folder", "project_root", "size", "sizes", "smoke"]
