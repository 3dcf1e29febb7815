"""widgets.batch_size_explorer: set the slider's .value from Python and check the figure and the summary."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from resviz import widgets
from resviz.analysis.invariance import batch_dependence_nets
from resviz.analysis.nets import Net
from resviz.models import cifar_resnet


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    torch.manual_seed(0)
    nets = [Net(norm, cifar_resnet(8, norm=norm, width=8), (0.5,) * 3, (0.25,) * 3) for norm in ("batch", "layer")]
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    return batch_dependence_nets(nets, images, [1, 2, 4, 8], draws=2)


def percent(frame, net, batch_size):
    rows = frame[(frame["net"] == net) & (frame["batch_size"] == batch_size)]
    return 100 * rows["max_change"] / rows["logit_scale"]


def test_slider_moves_bars_marker_and_summary(frame):
    w = widgets.batch_size_explorer(frame)
    assert [v for _, v in w.slider.options] == [1, 2, 4, 8] and w.batch_size == 2  # smallest size above 1
    bars = {t.name: t for t in w.figure.data[4:]}
    assert set(bars) == {"ResNet-8, batch", "ResNet-8, layer"}
    assert bars["ResNet-8, batch"].y[0] == pytest.approx(percent(frame, "ResNet-8, batch", 2).mean())
    w.slider.value = 8
    bars = {t.name: t for t in w.figure.data[4:]}
    assert bars["ResNet-8, batch"].y[0] == pytest.approx(percent(frame, "ResNet-8, batch", 8).mean())
    assert bars["ResNet-8, layer"].y[0] == pytest.approx(percent(frame, "ResNet-8, layer", 8).mean())
    assert w.figure.layout.shapes[0].x0 == 8
    assert "at batch size 8" in [a.text for a in w.figure.layout.annotations]
    assert w.summary.value.startswith("At batch size 8")
    assert f"{percent(frame, 'ResNet-8, batch', 8).mean():.3g} %" in w.summary.value
    w.slider.value = 1
    assert all(t.y[0] == 0 for t in w.figure.data[4:])  # alone in its batch: nothing to depend on


def test_explicit_start_and_bad_input(frame):
    assert widgets.batch_size_explorer(frame, batch_size=4).batch_size == 4
    with pytest.raises(ValueError, match=r"batch_size=5 was not measured"):
        widgets.batch_size_explorer(frame, batch_size=5)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['logit_scale'\]"):
        widgets.batch_size_explorer(frame.drop(columns="logit_scale"))
