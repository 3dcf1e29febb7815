"""Wall time of each notebook at each size (smoke, medium, full), run cold as a new user would: in JupyterLab's
kernel (nbclient, cwd = notebooks/), each notebook in a fresh $RESVIZ_OUT so it trains everything it needs itself.

    python benchmarks/notebooks.py --sizes smoke medium --results runs/bench-notebooks.json
    python benchmarks/notebooks.py --sizes full --results runs/bench-notebooks.json    # adds to the same file
    python benchmarks/notebooks.py --table --results runs/bench-notebooks.json        # the table only
    python benchmarks/notebooks.py --table --write --results runs/bench-notebooks.json  # + each notebook's header

Medium differs from full only in 02-04 (`notebooks/sizes.py`), so the other notebooks are timed at smoke and
full. Data: what `sizes.py` picks on this machine ($RESVIZ_DATA, $RESVIZ_DATASET, $RESVIZ_CHECKPOINTS and
$RESVIZ_CIFAR_JPEG as set when this runs); the table says which. Results accumulate in --results (JSON, one
entry per notebook and size, the latest kept), so the long full sizes can be timed in a separate call.
`--write` puts one line at the top of each notebook (`TIMING_MARK`), from the same results: one source.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SIZES = ("smoke", "medium", "full")
MEDIUM_NOTEBOOKS = ("02_degradation", "03_response_std", "04_gradient_flow")  # the others: medium = full
CIFAR_NOTEBOOKS = ("02_degradation", "03_response_std", "04_gradient_flow", "05_layer_norm", "06_lesion",
                   "08_signal_propagation")  # full size switches to CIFAR-10 when it is in data/ (sizes.py)
TIMING_MARK = "**Time (measured, cold, no GPU).**"


def notebook_paths(names: list[str] | None) -> list[Path]:
    """The notebooks named by prefix, in the order given (default: all, in order)."""
    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not names:
        return paths
    return [p for n in names for p in paths if p.stem.startswith(n)]


def size_env(size: str, out: Path) -> dict[str, str]:
    env = dict(os.environ, RESVIZ_OUT=str(out), RESVIZ_SIZE=size, PYTHONDONTWRITEBYTECODE="1")
    env["RESVIZ_SMOKE"] = "1" if size == "smoke" else "0"
    return env


def run_notebook(path: Path, size: str, scratch: Path, timeout_s: int) -> dict:
    """Execute one notebook in a fresh output folder; wall seconds, whether it finished, and the load it ran under."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    out = scratch / size / path.stem
    out.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    error = ""
    try:
        client.execute(env=size_env(size, out))  # the kernel's environment; this process's stays as it is
    except CellTimeoutError:
        error = f"stopped after a cell ran {timeout_s} s"
    except Exception as exc:  # noqa: BLE001 - recorded in the table, the next notebook still runs
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else ''}"
    wall = time.perf_counter() - t0
    return {"notebook": path.stem, "size": size, "wall_s": round(wall, 1), "error": error,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), no GPU" if not torch.cuda.is_available()
            else f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")


def load_results(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, results: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def cell(results: dict[str, dict], stem: str, size: str) -> str:
    if size == "medium" and stem not in MEDIUM_NOTEBOOKS:
        return "= full"
    entry = results.get(f"{stem}:{size}")
    if entry is None:
        return "not measured"
    if entry["error"].startswith("stopped"):
        return f"> {human(entry['wall_s'])} (stopped)"
    return f"failed ({entry['error']})" if entry["error"] else human(entry["wall_s"])


def table(results: dict[str, dict], stems: list[str]) -> str:
    lines = ["| notebook | smoke | medium | full |", "|---|---|---|---|"]
    for stem in stems:
        lines.append(f"| {stem} | " + " | ".join(cell(results, stem, s) for s in SIZES) + " |")
    return "\n".join(lines)


def timing_line(results: dict[str, dict], stem: str) -> str:
    parts = [f"`RESVIZ_SMOKE=1` {cell(results, stem, 'smoke')}"]
    if stem in MEDIUM_NOTEBOOKS:
        parts.append(f"`RESVIZ_SIZE=medium` {cell(results, stem, 'medium')}")
    parts.append(f"full {cell(results, stem, 'full')}")
    cifar = (" Full trains on the built-in digits unless CIFAR-10 is in `data/`: then each run is 16k steps, a"
             " GPU's job." if stem in CIFAR_NOTEBOOKS else "")
    return (f"{TIMING_MARK} On a 2-core CPU with no GPU, run alone with nothing trained yet: " + " · ".join(parts)
            + f".{cifar} A GPU is not measured yet; `benchmarks/notebooks.py` and BENCHMARKS.md hold the numbers.")


def write_timing(path: Path, line: str) -> None:
    """Replace (or add, after the title) the timing line in the notebook's first markdown cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    kept = [ln for ln in first.source.splitlines() if not ln.startswith(TIMING_MARK)]
    title, rest = kept[0], kept[1:]
    if rest and rest[0] == "":
        rest = rest[1:]
    first.source = "\n".join([title, "", line, "", *rest])
    nbformat.write(nb, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=[], choices=SIZES)
    parser.add_argument("--notebooks", nargs="*", help="name prefixes, run in this order, e.g. 10 01 (default: all)")
    parser.add_argument("--results", type=Path, default=ROOT / "runs" / "bench-notebooks.json")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell (a notebook is stopped there)")
    parser.add_argument("--table", action="store_true", help="print the table of --results")
    parser.add_argument("--write", action="store_true", help="write each notebook's timing line from --results")
    args = parser.parse_args()
    paths = notebook_paths(args.notebooks)
    results = load_results(args.results)
    with tempfile.TemporaryDirectory(prefix="resviz-nb-") as scratch:
        for size in args.sizes:
            for path in paths:
                if size == "medium" and path.stem not in MEDIUM_NOTEBOOKS:
                    continue
                entry = run_notebook(path, size, Path(scratch), args.timeout)
                results[f"{path.stem}:{size}"] = entry
                save_results(args.results, results)
                print(f"{path.stem:26s} {size:6s} {human(entry['wall_s']):>9s}  load {entry['load_before']}"
                      f"->{entry['load_after']}  {entry['error']}", flush=True)
    if args.table or not args.sizes:
        print(table(results, [p.stem for p in paths]))
        machines = sorted({e["machine"] for e in results.values()})
        print(f"\nmachine: {'; '.join(machines)}; python {sys.version.split()[0]}")
    if args.write:
        for path in paths:
            write_timing(path, timing_line(results, path.stem))


if __name__ == "__main__":
    main()
