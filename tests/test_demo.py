"""`resviz demo --smoke`: the seconds-long version of `make demo`. On a machine without any browser it exits 0,
writes its runs and the report page, and says in one line what it skipped and how to get it. Smoke runs live
apart from the real demo's, and only finished runs reach the report."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from resviz import export, runfolder, runs, schema
from resviz.demo import DEMO, DEMO_DEPTHS, DEMO_OUT, SMOKE_OUT, demo_configs, trained_only


def test_demo_is_a_fair_comparison():
    configs = demo_configs()
    assert sorted({(c.arch, c.depth) for c in configs}) == sorted(
        (a, d) for a in ("plain", "resnet") for d in DEMO_DEPTHS)
    # every net gets the same data, steps, batch, schedule and width: only arch and depth differ
    shared = {k: v for k, v in DEMO.to_dict().items() if k not in ("arch", "depth")}
    for c in configs:
        assert {k: v for k, v in c.to_dict().items() if k not in ("arch", "depth", "root")} == {
            k: v for k, v in shared.items() if k != "root"}
    assert DEMO.warmup == "on" and DEMO.device == "cpu" and DEMO.dataset == "digits"
    assert SMOKE_OUT != DEMO_OUT


def _demo(tmp_path, *extra, path=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if path is not None:  # a fresh machine: no browser anywhere
        env.update(PATH=path, BROWSER_PATH=str(tmp_path / "no-chrome"))
    return subprocess.run([sys.executable, "-m", "resviz.cli", "demo", "--smoke", "--no-progress",
                           "--root", str(tmp_path / "data"), *extra], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_demo_smoke_without_a_browser_exits_0_and_writes_the_report(tmp_path):
    r = _demo(tmp_path, path=os.path.dirname(sys.executable))  # `make demo`'s command, no chromium on PATH
    assert r.returncode == 0, r.stderr
    out = tmp_path / SMOKE_OUT  # the default smoke folder, apart from runs/demo
    rs = runs.load(out)
    assert len(rs) == 4 and set(rs.status["status"]) == {"done"}
    schema.validate(rs.stats)
    index = out / "report" / "index.html"
    page = index.read_text()
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", page), "the page loads a script from the network"
    assert sorted(p.name for p in (out / "report").rglob("*.*")) == ["index.html", "plotly.min.js"]
    skipped = [line for line in r.stdout.splitlines() if "not written" in line]
    assert len(skipped) == 1 and "apt-get install chromium" in skipped[0]
    # the line ends in the exact command that writes the PNGs once a browser is there (issue 24: it said "rerun
    # resviz report" with no arguments); typed as printed, with a browser it writes them from the finished runs
    command = re.search(r"then `(resviz report [^`]+)` \(nothing is trained again\)$", skipped[0]).group(1)
    assert command == f"resviz report {SMOKE_OUT} --out {SMOKE_OUT}/report --formats html,png"
    if export.find_browser() is not None:
        argv = [str(Path(sys.executable).with_name("resviz")), *shlex.split(command)[1:]]
        typed = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert typed.returncode == 0, typed.stderr
        assert sorted((out / "report" / "figures").glob("*.png")), typed.stdout
    assert r.stdout.strip().splitlines()[-1] == (
        f"next: open {index.relative_to(tmp_path)} in a browser (depth and step sliders, no Jupyter needed), "
        "or `jupyter lab notebooks/`")
    assert "digits-plain8-batch-w8-s0" in r.stdout  # the summary table
    # an explicit static format cannot be made without a browser: refused before any training, in one line
    bad = _demo(tmp_path, "--out", str(tmp_path / "other"), "--formats", "gif")
    assert bad.returncode == 2 and "unknown format(s) ['gif']" in bad.stderr and not (tmp_path / "other").exists()


def test_only_finished_runs_of_the_demo_reach_the_report(tmp_path):
    folder = tmp_path / "runs"
    for rid, status in (("a", "done"), ("b", "failed"), ("c", "done")):
        (folder / rid).mkdir(parents=True)
        (folder / rid / "config.json").write_text(json.dumps({"run_id": rid, "arch": "plain", "depth": 8}))
        runfolder.write_status(folder / rid, status)
    kept = trained_only(runs.load(folder), ["a", "b"])  # c: another sweep's run in the same folder
    assert list(kept.status["run_id"]) == ["a"]
