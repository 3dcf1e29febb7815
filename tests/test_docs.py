"""The documents agree with the code (issue 24).

- Every python block of every document runs, in order, in one namespace per document and a fresh folder (as a
  reader pastes them). A block that cannot run here (a GPU, a cluster, an excerpt of a block that runs elsewhere)
  says so on the line before its fence: `<!-- doc-test: skip (why) -->`. docs/integrations.md's blocks are run by
  tests/test_integrations_export.py (its `docs_run`), which this file checks; docs/architecture.md and
  docs/scale-out.md are left out while they are rewritten.
- No document says a model family's blocks are unknown (or need `metrics=[...]`) when the block registry knows
  them, says a family is known when it does not, or says a norm layer the Recorder observes is not observed.
- Every notebook setting notebooks/README.md documents resolves as it says (notebooks/sizes.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from resviz.probes.blocks import BLOCK_SPECS, is_norm

ROOT = Path(__file__).resolve().parents[1]
NOT_YET = {"docs/architecture.md", "docs/scale-out.md"}  # being rewritten in other branches
RUN_ELSEWHERE = {"docs/integrations.md": "tests/test_integrations_export.py"}
DOCS = sorted(p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", ROOT / "notebooks" / "README.md",
                                                       *(ROOT / "docs").glob("*.md")])
SKIP = re.compile(r"<!-- doc-test: skip \((?P<why>[^)]+)\) -->\s*$")
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(doc: str) -> list[tuple[str, str | None]]:
    """(code, why it is skipped or None) of each python block, in order."""
    text = (ROOT / doc).read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        found.append((m.group(1), skip.group("why") if skip else None))
    return found


def test_every_marker_sits_on_a_python_block():
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        markers = text.count("<!-- doc-test:")
        assert markers == sum(why is not None for _, why in blocks(doc)), f"{doc}: a doc-test marker on no block"


def test_docs_run_elsewhere_are_run_there():
    for doc, test in RUN_ELSEWHERE.items():
        source = (ROOT / test).read_text()
        assert doc in source and "exec(compile(block" in source and all(why is None for _, why in blocks(doc))


@pytest.mark.parametrize("doc", [d for d in DOCS if d not in NOT_YET and d not in RUN_ELSEWHERE])
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_every_python_block_of_the_doc_runs(doc, tmp_path, monkeypatch):
    import plotly.io as pio

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pio.renderers, "default", "json")  # `.show()` prints the figure instead of a browser tab
    namespace: dict = {"__name__": "__main__"}
    ran = 0
    try:
        for code, why in blocks(doc):
            if why is None:
                exec(compile(code, str(ROOT / doc), "exec"), namespace)  # noqa: S102 - the docs' own examples
                ran += 1
    finally:
        from resviz.probes import unregister_block

        for value in list(namespace.values()):  # classes a doc registered (docs/blocks.md)
            if isinstance(value, type) and issubclass(value, nn.Module):
                unregister_block(value)
    if doc == "README.md":  # the Python example recorded and drew its table
        df = namespace["df"]
        assert ran >= 3 and {"response_std", "branch_ratio"} <= set(df["metric"].astype(str))
        assert sorted(df["step"].unique()) == [0, 20, 40]


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_the_hf_example_config_does_not_warn_about_token_ids():
    """docs/integrations.md's tiny GPT-2 config, built as written: transformers says nothing about token ids
    outside the vocabulary (its defaults, 50256, are outside a 64-token one)."""
    code = next(c for c, _ in blocks("docs/integrations.md") if "GPT2Config" in c)
    config = re.search(r"^config = GPT2Config\(.*?\)\n(?=\S)", code, re.S | re.M).group(0)
    run = subprocess.run([sys.executable, "-c", "from transformers import GPT2Config, GPT2LMHeadModel\n" + config
                          + "GPT2LMHeadModel(config)\nprint(config.bos_token_id, config.eos_token_id)"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "token_id" not in run.stderr, run.stderr
    vocab = int(re.search(r"vocab_size=(\d+)", config).group(1))
    assert all(0 <= int(t) < vocab for t in run.stdout.split()), run.stdout


# ---- claims the block registry contradicts
def _known_names() -> set[str]:
    """Lower-case names of what the registry knows: its families' words and the modules of its classes."""
    names = set()
    for spec in BLOCK_SPECS:
        names |= {w.lower() for w in re.findall(r"[\w-]+", spec.family)}
        for cls in spec.classes:
            parts = cls.split(".")
            names |= {parts[0], parts[2] if len(parts) > 3 else ""} - {""}
    return names


# words a document uses for a model family -> the name the registry knows it by
FAMILY_WORDS = {
    "gpt-2": "gpt2", "gpt2": "gpt2", "llama": "llama", "mistral": "mistral", "qwen": "qwen2", "bert": "bert",
    "roberta": "roberta", "convnext": "convnext", "vit": "vision_transformer", "deit": "vision_transformer",
    "resnetv2": "resnetv2", "timm": "timm", "hugging face": "transformers", "torchvision": "torchvision",
}
NORM_WORDS = {"layernorm": nn.LayerNorm(4), "batchnorm": nn.BatchNorm2d(4), "groupnorm": nn.GroupNorm(2, 4),
              "rmsnorm": nn.RMSNorm(4)}
UNKNOWN = re.compile(r"not (yet )?known|does not know|doesn't know|unknown to|need(s)? `?metrics=", re.I)
KNOWN = re.compile(r"\bare known\b|\bknows\b", re.I)
NOT_OBSERVED = re.compile(r"not among the norm layers|not observed|does not observe", re.I)


def contradictions(text: str) -> list[str]:
    """The clauses of `text` that the registry (or the Recorder's norm layers) contradicts."""
    known = _known_names()
    found = []
    for clause in re.split(r"(?<=[.;])\s+", " ".join(text.split())):
        low = clause.lower()
        families = {FAMILY_WORDS[w] for w in FAMILY_WORDS if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", low)}
        if UNKNOWN.search(clause) and families & known:
            found.append(f"says {sorted(families & known)} unknown, the registry knows them: {clause}")
        if KNOWN.search(clause) and families - known:
            found.append(f"says {sorted(families - known)} known, the registry does not: {clause}")
        if NOT_OBSERVED.search(clause) and any(w in low and is_norm(m) for w, m in NORM_WORDS.items()):
            found.append(f"says a norm layer the Recorder observes is not observed: {clause}")
    return found


def test_the_claim_checker_catches_what_the_docs_used_to_say():
    old = ("GPT-2's blocks are not yet known to the Recorder, and its LayerNorms are not among the norm layers it "
           "observes, so `metrics=[\"grad_norm\"]` is what it can take today. Models whose residual blocks the "
           "Recorder does not know (timm, Hugging Face) need `metrics=[\"response_std\", \"grad_norm\"]`.")
    assert len(contradictions(old)) == 3
    assert contradictions("timm's Swin blocks are known.") == []  # no family word the checker knows: no claim
    assert contradictions("Hugging Face's Falcon and timm's ConvNeXt blocks are known.") == []
    assert contradictions("a block the Recorder does not know gets that call, filled in, in its error.") == []


@pytest.mark.parametrize("doc", [d for d in DOCS if d not in NOT_YET])
def test_no_doc_claim_contradicts_the_block_registry(doc):
    assert contradictions((ROOT / doc).read_text()) == []


# ---- notebooks/README.md's settings
def _documented_settings() -> dict[str, str]:
    """`RESVIZ_X...` variable -> the bullet that documents it in notebooks/README.md."""
    text = (ROOT / "notebooks" / "README.md").read_text()
    bullets = re.finditer(r"^- `(RESVIZ_[A-Z_]+)[=`].*?(?=^- |^\S|\Z)", text, re.S | re.M)
    return {m.group(1): m.group(0) for m in bullets}


def _sizes_in(env: dict[str, str], names) -> dict[str, dict]:
    code = ("import json, sizes\n"
            f"out = {{n: sizes.sizes(n) for n in {list(names)!r}}}\n"
            "print(json.dumps({n: {k: (list(v) if isinstance(v, tuple) else v)"
            " for k, v in s.items() if k in ('size', 'smoke', 'depths')} | {'steps': s['base'].steps if 'base' in s"
            " else s.get('steps')} for n, s in out.items()}))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESVIZ_")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=ROOT / "notebooks", env={**clean, **env})
    assert run.returncode == 0, run.stderr
    import json

    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_every_documented_size_resolves_as_documented(tmp_path):
    """RESVIZ_SIZE=smoke|medium|full and RESVIZ_SMOKE=1, read from notebooks/README.md and run in a fresh process
    (as a kernel started with them): smoke is the seconds-long version, medium sits between smoke and full for
    02-04 (`make demo`'s 400 steps on the digits) and is the full size elsewhere, full is the default."""
    import sizes

    settings = _documented_settings()
    assert {"RESVIZ_SMOKE", "RESVIZ_SIZE", "RESVIZ_OUT", "RESVIZ_DATA", "RESVIZ_DATASET", "RESVIZ_CHECKPOINTS",
            "RESVIZ_CIFAR_JPEG"} <= set(settings)
    documented = re.match(r"- `RESVIZ_SIZE=([a-z|]+)` \(default `(\w+)`", settings["RESVIZ_SIZE"])
    values, default = documented.group(1).split("|"), documented.group(2)
    assert tuple(values) == sizes.SIZES and default == "full"
    folders = {"RESVIZ_OUT": str(tmp_path / "out"), "RESVIZ_DATA": str(tmp_path / "data")}
    names = sizes.ALL_NOTEBOOKS
    got = {v: _sizes_in({**folders, "RESVIZ_SIZE": v}, names) for v in values}
    got["default"] = _sizes_in(folders, names)
    got["RESVIZ_SMOKE=1"] = _sizes_in({**folders, "RESVIZ_SMOKE": "1", "RESVIZ_SIZE": "full"}, names)
    assert got["default"] == got["full"]
    assert got["RESVIZ_SMOKE=1"] == got["smoke"]  # "the same as RESVIZ_SIZE=smoke, and it wins"
    for name in names:
        smoke, medium, full = got["smoke"][name], got["medium"][name], got["full"][name]
        assert smoke["smoke"] and smoke["size"] == "smoke" and not full["smoke"] and full["size"] == "full"
        if smoke["steps"] is not None:
            assert smoke["steps"] <= 20 < full["steps"], name
        if name in ("02_degradation", "03_response_std", "04_gradient_flow"):
            assert medium["size"] == "medium" and medium["steps"] == 400 and medium["depths"] == [8, 44], name
            assert smoke["steps"] < medium["steps"] < full["steps"]
        else:  # "the other notebooks have no medium size and run the full one"
            assert medium == full, name
    bad = subprocess.run([sys.executable, "-c", "import sizes; sizes.sizes('02_degradation')"], cwd=ROOT / "notebooks",
                         capture_output=True, text=True, env={**os.environ, "RESVIZ_SIZE": "large"}, timeout=300)
    assert "RESVIZ_SIZE='large' is not a size; use one of smoke, medium, full" in bad.stderr  # "refused by name"


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_a_notebook_runs_in_smoke_size_from_resviz_size(tmp_path):
    """The documented setting, end to end in a real kernel: RESVIZ_SIZE=smoke (and no RESVIZ_SMOKE) runs 07 at
    its smoke size (it used to be ignored, and a notebook ran at full size)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "07_shattered_gradients.ipynb", as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESVIZ_")}
    env.update(RESVIZ_SIZE="smoke", RESVIZ_OUT=str(tmp_path / "out"), PYTHONDONTWRITEBYTECODE="1")
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first + 1, nbformat.v4.new_code_cell("print('size:', s['size'], s['depths'])"))
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False,
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute(env=env)  # the kernel's env
    printed = "".join(o.get("text", "") for o in nb.cells[first + 1].outputs)
    assert printed.strip() == "size: smoke (8, 20, 44)", printed
