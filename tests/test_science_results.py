"""README.md and BENCHMARKS.md against results/*.json: every science number the documents quote is the one its
script wrote (benchmarks/science.py renders each marked block from its file); each file says where it was measured;
effects are claimed only from paired intervals over at least 10 seeds."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import science  # noqa: E402  (benchmarks/science.py)

sys.path.remove(str(ROOT / "benchmarks"))


def _blocks() -> list[tuple[str, str, str]]:
    """(document, block name, body) of every marked block."""
    return [(path.name, m["name"], m["body"]) for path in science.DOCUMENTS
            for m in science.BLOCK.finditer(path.read_text())]


def test_every_block_is_its_results_file_rendered():
    blocks = _blocks()
    files = {f.stem for f in (ROOT / "results").glob("*.json")}
    assert {science.BLOCKS[name][0] for _, name, _ in blocks} == files  # every result is quoted, nothing else
    for document, name, body in blocks:
        assert body == science.rendered(name), f"{document}: block {name} differs from results/; run " \
                                               "`python benchmarks/science.py write`"


def test_each_results_file_says_where_and_with_which_seeds_it_was_measured():
    files = sorted((ROOT / "results").glob("*.json"))
    assert files and {f.stem for f in files} <= {file for file, _ in science.BLOCKS.values()}
    for f in files:
        r = json.loads(f.read_text())
        env = r["environment"]
        assert {"torch", "threads", "device", "python", "date", "commit"} <= set(env), f.name
        assert r["seeds"] and r["command"].startswith("python benchmarks/science.py "), f.name
        assert env["torch"] in science.rendered(next(n for n, (file, _) in science.BLOCKS.items() if file == f.stem))


def test_numbers_outside_the_blocks_are_not_science_numbers():
    """The science paragraphs quote numbers only inside the blocks: no stray decimal in README's demo section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("What it shows, at the scale a CPU allows"):text.index("**The full CIFAR-10 version**")]
    outside = science.BLOCK.sub("", section)
    assert not re.findall(r"\d\.\d", outside), re.findall(r"[^ ]*\d\.\d[^ ]*", outside)


def test_interval_is_the_t_interval():
    from scipy import stats

    v = np.array([0.1, 0.3, 0.2, 0.5, 0.4, 0.35, 0.15, 0.25, 0.45, 0.3])
    i = science.interval(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (i["lo"], i["hi"], i["n"], i["positive"]) == (pytest.approx(lo), pytest.approx(hi), 10, 10)


def _fig7(diffs) -> dict:
    seeds = list(range(len(diffs)))
    paired = {k: {"interval": science.interval(diffs)} for k in ("eval_mean", "eval_first10", "clean_train_error")}
    return {"paired": paired, "depth": 20, "seeds": seeds, "seeds_planned": 10, "command": "python benchmarks/...",
            "settings": "digits, depth 20; more", "environment": {"torch": "2.x", "threads": 1, "device": "cpu"}}


def test_an_effect_is_claimed_only_from_ten_seeds_and_in_its_measured_direction():
    rng = np.random.default_rng(0)
    up = science.render_fig7_claim(_fig7(0.05 + 0.01 * rng.standard_normal(10)))
    assert "10-seed benchmark" in up and "larger than ResNet-20's" in up and "10/10 seeds positive" in up
    down = science.render_fig7_claim(_fig7(-0.05 + 0.01 * rng.standard_normal(10)))
    assert "smaller than ResNet-20's" in down
    null = science.render_fig7_claim(_fig7(0.05 * rng.standard_normal(10)))
    assert "not clearly different from ResNet-20's" in null
    few = science.render_fig7_claim(_fig7(0.05 + 0.01 * rng.standard_normal(3)))
    assert "3 seeds are too few to claim an effect" in few and "larger" not in few
