"""The dependency rule of docs/architecture.md, checked on the code: every module of the package sits on one
floor of the table in that document, imports only from its own floor or lower ones, takes no private name from
another module, imports at the top of the file (optional extras excepted) and is in no import cycle.

The table in docs/architecture.md is the one statement of the rule; this test reads it from there.
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resviz"
DOC = ROOT / "docs" / "architecture.md"

# Imported inside functions on purpose: optional extras (`import resviz` never imports them); torchvision and
# scikit-learn, needed only when images or the digits are loaded, because at the top they more than double the
# start-up of every `resviz` command (`resviz --help`: 2.6 s -> 6.2 s of CPU, measured with /usr/bin/time); the
# confined Ray child imports the package only after it has left the network.
OPTIONAL = {"timm", "transformers", "lightning", "pytorch_lightning", "ray", "tensorboard", "torch.utils.tensorboard",
            "wandb", "fastai", "playwright", "accelerate"}
DEFERRED_FOR_START_UP = {"torchvision", "sklearn"}
DEFERRED_FILES = {"resviz/sweeps/confined.py"}


def floors() -> dict[str, int]:
    """`module pattern -> floor` from the floors table of docs/architecture.md (`| 3 data | datasets, loader |`)."""
    table = DOC.read_text().split("## Floors", 1)[1]
    out = {}
    for row in re.findall(r"^\| *(\d+) [^|]*\|([^|]*)\|", table, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", row[1]):
            out[f"resviz.{name}"] = int(row[0])
    assert out, f"no floors table found under '## Floors' in {DOC}"
    return out


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]):
    """(target module, imported name or None, at top level?) for each import of the package in one file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in ast.walk(f)}
    top = {id(n) for n in ast.walk(tree)} - in_functions  # module level, `if TYPE_CHECKING:` included
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub, None, id(node) in top) if sub in known else (base, alias.name, id(node) in top)


def floor_of(module: str, table: dict[str, int]) -> int | None:
    while module:
        if module in table:
            return table[module]
        module = module.rpartition(".")[0]
    return None


def edges():
    known = modules()
    for name, path in sorted(known.items()):
        for target, what, at_top in imports(name, path, known):
            yield name, path, target, what, at_top


def test_every_module_is_on_a_floor():
    table = floors()
    missing = [m for m in modules() if m != "resviz" and floor_of(m, table) is None]
    assert not missing, f"modules on no floor of {DOC.name}: {missing}"


def test_imports_point_down_only():
    table = floors()
    up = [f"{a} (floor {floor_of(a, table)}) imports {b} (floor {floor_of(b, table)})"
          for a, _, b, _, _ in edges()
          if b.startswith("resviz.") and a != "resviz" and floor_of(b, table) > floor_of(a, table)]
    assert not up, "imports that run back up:\n" + "\n".join(up)


def test_nothing_imports_the_package_face():
    back = [f"{a} imports {what} from resviz" for a, _, b, what, _ in edges() if b == "resviz" and a != "resviz"]
    assert not back, "\n".join(back)


def test_no_private_name_crosses_modules():
    private = [f"{a} takes {b}.{what}" for a, _, b, what, _ in edges()
               if b.startswith("resviz") and what and what.startswith("_") and not what.startswith("__")]
    assert not private, "\n".join(private)


def test_imports_are_at_the_top():
    inner = [f"{path.relative_to(ROOT)}: import {b}" for a, path, b, _, at_top in edges()
             if not at_top and str(path.relative_to(ROOT)) not in DEFERRED_FILES
             and not any(b == o or b.startswith(o + ".") for o in OPTIONAL | DEFERRED_FOR_START_UP)
             and not b.startswith("__future__")]
    assert not inner, "imports inside functions (move them to the top):\n" + "\n".join(inner)


def test_no_import_cycles():
    graph = defaultdict(set)
    for a, _, b, _, _ in edges():
        if b.startswith("resviz.") and a != b:
            graph[a].add(b)
    cycles, index, low, stack, on = [], {}, {}, [], set()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
