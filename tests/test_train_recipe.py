"""What the training loop's gradients and optimiser contain: the recorded gradient norms leave weight decay out."""
from __future__ import annotations

import pandas as pd

from resviz.train import train
from tiny_training import data_root, tiny  # noqa: F401 (fixture)


def _grad_norms(folder) -> pd.DataFrame:
    stats = pd.read_parquet(folder / "stats.parquet")
    rows = stats[stats["metric"].astype(str) == "grad_norm"]
    return rows.set_index(["step", "layer"])["value"].sort_index()


def test_recorded_grad_norm_excludes_weight_decay(tmp_path, data_root):  # noqa: F811
    """Two runs that differ only in weight decay record the same gradient norms at the first step (same weights,
    same batch): the Recorder reads ∂L/∂W before SGD adds decay × W. At the next recorded step the weights
    differ, so so do the norms: the decay did act."""
    runs = {}
    for wd in (0.0, 5.0):
        config = tiny(data_root, steps=2, log_every=1, eval_every=2, checkpoint_every=2, record_every=1,
                      weight_decay=wd, record_metrics=("grad_norm",))
        runs[wd] = _grad_norms(train(config, out=tmp_path / f"wd{wd}").folder)
    first = {wd: g.loc[0] for wd, g in runs.items()}
    assert len(first[0.0]) > 10
    pd.testing.assert_series_equal(first[0.0], first[5.0], rtol=1e-6)
    second = {wd: g.loc[1] for wd, g in runs.items()}
    assert (abs(second[0.0] - second[5.0]) / second[0.0]).max() > 1e-3
