"""Packaging and the Makefile (issue 24): `make demo` installs the core package only and says what it does first,
`make test` adds the [test] extra, torch/torchvision are ranges pinned by a committed constraints file that the
Makefile passes to pip, the stamps reinstall exactly when pyproject.toml or the constraints change, and the
project's own packaging prints no setuptools warning.

The Makefile tests run the real `make` on a copy of the real Makefile, pyproject.toml and constraints file in a
temporary folder (no venv there, so nothing is installed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = "constraints/ci.txt"
PINNED = ("torch", "torchvision")
# setuptools' own warnings as a build prints them (the old `license = { text = "MIT" }` table printed
# "BuildBackendWarning: `project.license` as a TOML table is deprecated"; the flat layout's import finder printed
# "BuildBackendWarning: Editable installation.").
SETUPTOOLS_WARNINGS = re.compile(r"BuildBackendWarning|SetuptoolsDeprecationWarning|SetuptoolsWarning|"
                                 r"deprecated|Editable installation", re.IGNORECASE)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, Version]:
    lines = (ROOT / CONSTRAINTS).read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {r.name: Version(next(iter(r.specifier)).version) for r in reqs}


def test_dependencies_are_ranges_and_the_constraints_pin_a_pair_inside_them():
    deps = {Requirement(d).name: Requirement(d) for d in pyproject()["project"]["dependencies"]}
    for dep in deps.values():  # a library cannot ask its users' environments for one exact version
        assert not any(s.operator in ("==", "===") for s in dep.specifier), dep
    pinned = pins()
    assert set(PINNED) <= set(pinned)
    for name in PINNED:
        assert deps[name].specifier, f"{name} has no range in pyproject.toml"
        assert deps[name].specifier.contains(pinned[name]), (name, deps[name].specifier, pinned[name])
    assert f"- -c {CONSTRAINTS}" in (ROOT / "environment.yml").read_text()  # conda installs the same pair
    assert "constraints.txt" not in (ROOT / ".gitignore").read_text().split()  # the file is committed
    tracked = subprocess.run(["git", "ls-files", CONSTRAINTS], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0:  # a git checkout (CI's clean clone is one)
        assert tracked.stdout.strip() == CONSTRAINTS


def test_the_installed_torch_is_the_pinned_one_in_ci():
    """CI installs through the Makefile, so the suite runs at the pinned versions; elsewhere any version in the
    ranges may be installed and the suite says which it ran at."""
    import torch
    import torchvision

    installed = {"torch": Version(torch.__version__).public, "torchvision": Version(torchvision.__version__).public}
    if os.environ.get("CI", "").lower() not in ("1", "true"):
        pytest.skip(f"not CI: installed {installed}, pinned {pins()}")
    assert {k: Version(v) for k, v in installed.items()} == {k: pins()[k] for k in PINNED}


@pytest.fixture
def make_copy(tmp_path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    for name in ("Makefile", "pyproject.toml", CONSTRAINTS):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=folder, capture_output=True, text=True,
                          timeout=60)


def pip_installs(dry_run: str) -> list[str]:
    return [line for line in dry_run.splitlines() if "pip install" in line and "--upgrade pip" not in line]


def test_make_demo_installs_the_core_package_and_make_test_adds_the_test_extra(make_copy):
    demo = pip_installs(make(make_copy, "-n", ".venv/.installed-core").stdout)
    assert len(demo) == 1 and demo[0].endswith(f"-c {CONSTRAINTS} -e .") and "[" not in demo[0], demo
    test = pip_installs(make(make_copy, "-n", "test").stdout)
    assert test[0] == demo[0] and test[1].endswith(f'-c {CONSTRAINTS} -e ".[test]"'), test
    assert "pytest" in make(make_copy, "-n", "test").stdout


def test_stamps_reinstall_when_pyproject_or_constraints_change(make_copy):
    core, extra = ".venv/.installed-core", ".venv/.installed-test"
    (make_copy / ".venv").mkdir()

    def up_to_date(target: str) -> bool:  # make -q: exit 0 when nothing would run
        return make(make_copy, "-q", target).returncode == 0

    for name in ("pyproject.toml", CONSTRAINTS):
        (make_copy / core).touch()
        (make_copy / extra).touch()
        stamp_time = (make_copy / core).stat().st_mtime
        os.utime(make_copy / name, (stamp_time - 10, stamp_time - 10))
        assert up_to_date(core) and up_to_date(extra)  # a second `make demo` / `make test` installs nothing
        os.utime(make_copy / name, (stamp_time + 10, stamp_time + 10))
        assert not up_to_date(core) and not up_to_date(extra), f"{name} changed but make would not reinstall"
        os.utime(make_copy / name, (stamp_time - 10, stamp_time - 10))
    os.utime(make_copy / core, (stamp_time + 20, stamp_time + 20))  # core reinstalled: the extra follows
    assert up_to_date(core) and not up_to_date(extra)


def test_make_demo_says_what_it_does_and_how_long_before_pip_starts(make_copy):
    """The first thing `make demo` prints is its plan with time and size estimates; here the venv cannot be
    created (PYTHON=false), which shows that the plan comes before any venv or pip command."""
    run = make(make_copy, "demo", "PYTHON=false")
    assert run.returncode != 0
    first = run.stdout.splitlines()[0]
    assert first.startswith("make demo: first run: create .venv/ and install resviz"), first
    assert re.search(r"about \d+ minutes and a [\d.]+ GB download", first), first
    assert re.search(r"train 4 nets .*about \d+ minutes", first), first
    (make_copy / ".venv").mkdir()
    (make_copy / ".venv/.installed-core").touch()  # installed already: it says so, then trains
    dry = make(make_copy, "-n", "demo").stdout.splitlines()
    assert "make demo: .venv/ exists, then train 4 nets" in dry[0] and "about" in dry[0], dry[0]
    assert not pip_installs("\n".join(dry))


@pytest.mark.slow
def test_installing_the_package_prints_no_setuptools_warning(tmp_path):
    """A real `pip install -e .` (what `make` runs) and a real wheel build, each in pip's isolated build
    environment with the setuptools that pyproject.toml asks for (fetched from the package index)."""
    target = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python")]
    editable = subprocess.run([*pip, "install", "--no-deps", "-e", str(ROOT)], capture_output=True, text=True,
                              timeout=540)
    assert editable.returncode == 0, editable.stdout + editable.stderr
    assert not SETUPTOOLS_WARNINGS.findall(editable.stdout + editable.stderr), editable.stdout + editable.stderr
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=540)
    assert wheel.returncode == 0, wheel.stdout + wheel.stderr
    assert not SETUPTOOLS_WARNINGS.findall(wheel.stdout + wheel.stderr), wheel.stdout + wheel.stderr
    (built,) = (tmp_path / "dist").glob("resviz-*.whl")
    import zipfile

    names = zipfile.ZipFile(built).namelist()
    assert "resviz/probes/recorder.py" in names and not any(n.startswith(("tests/", "notebooks/")) for n in names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(built).read(metadata).decode()
    assert "License-Expression: MIT" in text and "Requires-Dist: torch<3,>=2.4" in text
