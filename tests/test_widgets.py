"""widgets.explore: set the controls' .value from Python and check the figure; bad input ends in the message."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resviz import synthetic
from resviz import io, runfolder, runs, widgets

RUNS = [("plain", 20), ("resnet", 20), ("plain", 32), ("resnet", 32), ("resnet", 56)]


@pytest.fixture(scope="module")
def stats() -> pd.DataFrame:
    return synthetic.stats_frame(RUNS, steps=(0, 100, 200, 300))


def expected(stats, run_id, metric, step):
    rows = stats[(stats["run_id"] == run_id) & (stats["metric"] == metric) & (stats["step"] == step)]
    return rows.sort_values("layer_index")["value"].to_numpy()


def shown(d):
    return {t.name: t for t in d.figure.data if t.visible is not False}


def test_sliders_drive_data_and_title(stats):
    d = widgets.explore(stats)
    assert d.message.value == ""
    assert [v for _, v in d.depth_slider.options] == [20, 32, 56]
    assert [v for _, v in d.step_slider.options] == [0, 100, 200, 300]
    assert d.step_slider.value == 300 and d.depth_slider.value == 20
    assert set(shown(d)) == {"plain-20", "ResNet-20"}
    np.testing.assert_array_equal(shown(d)["ResNet-20"].y, expected(stats, "resnet20-batch-s0", "response_std", 300))
    assert d.figure.layout.title.text.endswith("depth 20, plain and ResNet, step 300")

    d.depth_slider.value = 32
    assert set(shown(d)) == {"plain-32", "ResNet-32"}
    np.testing.assert_array_equal(shown(d)["plain-32"].y, expected(stats, "plain32-batch-s0", "response_std", 300))
    assert "depth 32" in d.figure.layout.title.text

    d.step_slider.value = 100
    np.testing.assert_array_equal(shown(d)["plain-32"].y, expected(stats, "plain32-batch-s0", "response_std", 100))
    assert d.figure.layout.title.text.endswith("step 100")
    t = shown(d)["plain-32"]
    assert t.text[3] == "layer1.1.bn1" and t.customdata[3] == 3 and "%{text}" in t.hovertemplate  # names the layer

    d.depth_slider.value = 56  # one run only: the spare trace is hidden, the step is kept
    assert list(shown(d)) == ["ResNet-56"] and len(d.figure.data) == 2
    assert d.figure.layout.title.text.endswith("depth 56, ResNet, step 100")
    np.testing.assert_array_equal(shown(d)["ResNet-56"].y, expected(stats, "resnet56-batch-s0", "response_std", 100))


def test_sort_metric_and_arch_controls(stats):
    d = widgets.explore(stats, depth=32)
    d.sort_toggle.value = True
    y = np.asarray(shown(d)["ResNet-32"].y)
    assert np.all(np.diff(y) <= 0)
    np.testing.assert_array_equal(np.sort(y)[::-1], np.sort(expected(stats, "resnet32-batch-s0", "response_std", 300))[::-1])
    assert d.figure.layout.xaxis.title.text.startswith("rank") and "(sorted)" in d.figure.layout.title.text

    d.sort_toggle.value = False
    d.metric_dropdown.value = "grad_norm"
    assert d.figure.layout.yaxis.type == "log"
    assert d.figure.layout.yaxis.title.text.startswith("‖∂L/∂W‖")
    np.testing.assert_array_equal(shown(d)["plain-32"].y, expected(stats, "plain32-batch-s0", "grad_norm", 300))

    d.arch_dropdown.value = "plain"
    assert list(shown(d)) == ["plain-32"] and [v for _, v in d.depth_slider.options] == [20, 32]
    assert ", plain, step 300" in d.figure.layout.title.text
    d.metric_dropdown.value = "skip_std"  # plain nets have none: arch falls back to all
    assert d.arch_dropdown.value == "all" and list(shown(d)) == ["ResNet-32"]
    assert d.figure.layout.xaxis.title.text.startswith("residual add index")

    d.metric_dropdown.value = "channel_var"  # two rows per block (branch, output): two lines per run
    assert list(shown(d)) == ["plain-32 · branch", "plain-32 · out", "ResNet-32 · branch", "ResNet-32 · out"]
    t = shown(d)["ResNet-32 · out"]
    assert list(t.x) == list(range(15)) and t.line.dash == "dash" and t.text[0] == "layer1.0.probe_out"
    rows = stats[(stats["run_id"] == "resnet32-batch-s0") & (stats["metric"] == "channel_var") & (stats["step"] == 300)]
    out = rows[rows["layer"].astype(str).str.endswith(".probe_out")].sort_values("layer_index")["value"]
    np.testing.assert_array_equal(t.y, out.to_numpy())


def test_display_delegates_to_the_vbox(stats):
    d = widgets.explore(stats)
    bundle = d._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == d.widget.model_id
    assert d.figure in d.widget.children


def test_big_table_uses_released_sliders():
    big = synthetic.stats_frame([("resnet", 1202), ("plain", 1202)], steps=(0, 10), metrics=("response_std",))
    d = widgets.explore(big)
    assert d.step_slider.continuous_update is False
    assert len(shown(d)["ResNet-1202"].y) == 1201
    small = widgets.explore(synthetic.stats_frame([("resnet", 20)], metrics=("response_std",)))
    assert small.step_slider.continuous_update is True


def test_missing_metric_is_a_message_not_a_traceback(stats):
    only = stats[stats["metric"] == "grad_norm"]
    d = widgets.explore(only, metric="response_std")
    assert "no 'response_std' rows; showing 'grad_norm'" in d.message.value
    assert d.metric_dropdown.value == "grad_norm" and len(shown(d)) == 2

    d = widgets.explore(stats.drop(columns=["layer_index"]))
    assert "missing column(s) ['layer_index']" in d.message.value
    assert d.depth_slider.disabled and d.step_slider.disabled

    d = widgets.explore(stats.iloc[:0])
    assert "no per-layer statistics to show" in d.message.value

    d = widgets.explore(42)
    assert "explore() got int" in d.message.value


def write_run(root: Path, run_id: str, arch: str, depth: int, status: str, reason: str = "",
              stats: pd.DataFrame | None = None) -> Path:
    folder = root / run_id
    io.atomic_write_json(folder / "config.json", {"run_id": run_id, "arch": arch, "depth": depth, "norm": "batch",
                                                    "shortcut": "A", "seed": 0, "steps": 300})
    runfolder.write_status(folder, status, reason)
    if stats is not None:
        io.atomic_write_parquet(folder / "stats.parquet", stats)
    return folder


def test_empty_folder_and_failed_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    d = widgets.explore(empty)
    assert "no run folders found in" in d.message.value and str(empty) in d.message.value

    failed = tmp_path / "failed"
    write_run(failed, "resnet20-a", "resnet", 20, "failed", "CUDA out of memory")
    write_run(failed, "plain20-a", "plain", 20, "failed", "CUDA out of memory")
    d = widgets.explore(failed)
    assert "no per-layer statistics to show; 2 run(s): 2 failed" in d.message.value
    assert "CUDA out of memory" in d.message.value
    d.refresh_button.click()  # still nothing: the message stays, nothing raises
    assert "2 failed" in d.message.value

    missing = widgets.explore(tmp_path / "nope")
    assert "no run folder at" in missing.message.value


def test_refresh_picks_up_rows_of_a_run_still_training(tmp_path):
    full = synthetic.stats_frame([synthetic.SyntheticRun("resnet", 20, run_id="live")], steps=(0, 100, 200),
                                 metrics=("response_std",))
    folder = write_run(tmp_path, "live", "resnet", 20, "running", stats=full[full["step"] <= 100])
    d = widgets.explore(folder)
    assert [v for _, v in d.step_slider.options] == [0, 100] and d.step_slider.value == 100
    assert "1 run(s): 1 running" in d.message.value

    io.atomic_write_parquet(folder / "stats.parquet", full)  # the trainer flushed another step
    d.refresh_button.click()
    assert [v for _, v in d.step_slider.options] == [0, 100, 200]
    assert d.step_slider.value == 200  # it was at the newest step, so it follows
    np.testing.assert_array_equal(shown(d)["ResNet-20"].y, expected(full, "live", "response_std", 200))
    assert d.figure.layout.title.text.endswith("step 200")

    d.step_slider.value = 0
    d.refresh_button.click()
    assert d.step_slider.value == 0  # a step chosen by hand is kept

    for source in (runs.load(folder), str(tmp_path / "l*")):  # a RunSet and a glob work the same way
        other = widgets.explore(source)
        assert "1 running" in other.message.value and other.step_slider.value == 200


def test_export_button_writes_html_and_shows_paths(stats, tmp_path):
    d = widgets.explore(stats, export_folder=tmp_path / "out")
    d.depth_slider.value = 32
    d.export_formats.value = ("html",)
    d.export_button.click()
    (path,) = d.last_export
    assert path == tmp_path / "out" / "response_std_depth32_all_step300.html"
    assert path.is_file() and str(path) in d.message.value
    assert "depth 32, plain and ResNet, step 300" in path.read_text()

    d.export_folder.value = str(path)  # a file, not a folder
    d.export_button.click()
    assert "it is a file, not a folder" in d.message.value


def test_export_without_browser_keeps_html(stats, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    d = widgets.explore(stats, export_folder=tmp_path)
    d.export_formats.value = ("html", "png")
    d.export_button.click()
    assert "apt-get install chromium" in d.message.value
    assert [p.suffix for p in d.last_export] == [".html"] and d.last_export[0].is_file()
    assert not list(tmp_path.glob("*.png"))


def test_dashboard_opens_on_the_eval_mode_fig7_when_recorded(stats):
    evals = stats[stats["metric"] == "response_std"].assign(metric="response_std_eval")
    assert widgets.explore(pd.concat([stats, evals], ignore_index=True)).metric_dropdown.value == "response_std_eval"
    assert widgets.explore(stats).metric_dropdown.value == "response_std"  # older runs: the train-mode one
