"""Every notebooks/*.ipynb runs headless in smoke mode and is committed clean.

Each notebook is executed with nbclient (cwd = notebooks/, so its `import sizes` finds notebooks/sizes.py;
RESVIZ_SMOKE=1, RESVIZ_OUT = one temporary folder for the whole module, so the smoke runs the notebooks share
are trained once; the local checkpoints and JPEG copy from ../shared through conftest's `dev_copies`); any cell
error fails the test.
The static checks: no outputs, no widget state, no `def`/`class` in a cell (the package does the work).
"""
from __future__ import annotations

import ast
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import sizes  # notebooks/sizes.py (conftest puts notebooks/ on sys.path, as the kernel's cwd does)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
IDS = [p.stem for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, f"expected the notebooks in {NOTEBOOK_DIR}, found {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state; clear it before committing"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    for i, cell in enumerate(code):
        assert not cell.outputs and cell.execution_count is None, f"{path.name} code cell {i} has outputs; clear them"
        tree = ast.parse(cell.source)  # also: every cell is valid Python
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                             ast.Lambda))]
        assert not defs, f"{path.name} code cell {i} defines {type(defs[0]).__name__}: put logic in the package"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("#"), (
        f"{path.name} must open with a markdown cell: the question, what to move, what the paper found")


NEEDS_CHECKPOINTS = {"03_response_std", "06_lesion"}  # notebooks that load the akamaster checkpoints


def _skip_without_checkpoints(stem: str) -> None:
    """A user's clone is offline-capable only with the checkpoints somewhere local: skip, saying where."""
    from resviz.pretrained import find_local, hub_path

    try:
        names = sizes.sizes(stem).get("checkpoints") or ["resnet20"]
    except (KeyError, ValueError):  # a notebook without its own size table loads the smallest one
        names = ["resnet20"]
    dirs = sizes.checkpoint_dirs()
    missing = [n for n in names if find_local(n, dirs) is None and not hub_path(n).is_file()]
    if missing:
        pytest.skip(f"{stem} needs the akamaster checkpoints {missing}: not in ../shared, $RESVIZ_CHECKPOINTS "
                    "or the torch hub cache (no internet here)")


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebooks-out")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_notebook_executes(path: Path, smoke_out: Path, monkeypatch, dev_copies):
    monkeypatch.setenv("RESVIZ_SMOKE", "1")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # the kernel's `import sizes` leaves no __pycache__ here
    monkeypatch.setenv("RESVIZ_OUT", str(smoke_out))
    monkeypatch.delenv("RESVIZ_DATASET", raising=False)  # smoke mode: the built-in digits
    if path.stem in NEEDS_CHECKPOINTS:
        _skip_without_checkpoints(path.stem)
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    after = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    assert after == before, f"{path.name} wrote into notebooks/: {sorted(set(after) - set(before))}"
    if path.stem in sizes.NOTEBOOKS:  # the notebooks that export: their files landed under RESVIZ_OUT
        written = sorted((smoke_out / "figures" / path.stem).glob("*.html"))
        assert written, f"{path.name} exported no figure into {smoke_out / 'figures' / path.stem}"
    print(f"{path.name}: {seconds:.1f} s")
