"""`resviz demo --smoke`: the seconds-long version of `make demo` runs and writes its runs and figures."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from resviz import runs, schema
from resviz.demo import DEMO, DEMO_DEPTHS, demo_configs


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


def test_demo_smoke_writes_runs_and_figures(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "resviz.cli", "demo", "--smoke", "--no-progress", "--out", str(out),
                        "--root", str(tmp_path / "data"), "--formats", "html"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    rs = runs.load(out)
    assert len(rs) == 4 and set(rs.status["status"]) == {"done"}
    assert set(rs.status["arch"]) == {"plain", "resnet"}
    schema.validate(rs.stats)
    assert {"response_std", "grad_norm"} <= set(rs.stats["metric"].astype(str))
    for name in ("training_curves.html", "response_std.html"):
        html = (out / "figures" / name).read_text()
        assert "plotly.js v" in html  # plotly.js itself is inside: the page opens offline
        assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", html), "the page loads a script from the network"
        assert f"wrote {out / 'figures' / name}" in r.stdout
    assert "digits-plain8-batch-w8-s0" in r.stdout  # the summary table
