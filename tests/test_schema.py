"""The tables' schema: validate / coerce / concat / empty, and the metric table every module reads."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resviz import probes, schema
from resviz.models import cifar_resnet
from resviz.probes import blocks, plan, recorder


def stats_rows(n=3, **overrides) -> pd.DataFrame:
    """A small stats table with plain (object / int / float) dtypes, as a user might build one."""
    rows = {
        "run_id": ["r"] * n, "arch": ["resnet"] * n, "depth": [8] * n, "norm": ["batch"] * n,
        "shortcut": ["A"] * n, "seed": [0] * n, "step": list(range(n)), "epoch": [0.5] * n,
        "layer": ["bn1"] * n, "layer_index": [0] * n, "stage": [0] * n, "block": [-1] * n,
        "metric": ["response_std"] * n, "value": [1.0] * n,
    }
    rows.update(overrides)
    return pd.DataFrame(rows)


def canonical(df: pd.DataFrame, columns: dict[str, str]) -> bool:
    want = {"str": "category", "int": "int64", "float": "float64"}
    return all(str(df[c].dtype) == want[k] for c, k in columns.items() if c in df.columns)


# ---------------------------------------------------------------------------------- validate / coerce
def test_validate_returns_the_frame_and_accepts_plain_dtypes():
    df = stats_rows()
    assert schema.validate(df) is df


def test_validate_names_what_is_wrong():
    with pytest.raises(TypeError, match=r"stats table must be a pandas DataFrame, got dict"):
        schema.validate({"value": [1.0]})
    with pytest.raises(ValueError, match=r"stats table is missing column\(s\) \['value'\]; expected \['run_id'"):
        schema.validate(stats_rows().drop(columns=["value"]))
    with pytest.raises(ValueError, match=r"stats table has mistyped column\(s\): step is float64, expected int"):
        schema.validate(stats_rows(step=[0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"channel is float64, expected int"):
        schema.validate(stats_rows().assign(channel=1.5))
    with pytest.raises(ValueError, match=r"stats table has unknown metric\(s\) \['std'\]; valid: \['act_grad_norm'"):
        schema.validate(stats_rows(metric=["std", "response_std", "std"]))
    with pytest.raises(ValueError, match=r"training-metrics table is missing column\(s\) \['lr'"):
        schema.validate_train(schema.empty_train().drop(columns=["lr", "seconds"]))


def test_coerce_gives_canonical_dtypes_and_keeps_values():
    df = schema.coerce(stats_rows().assign(channel=[-1, 0, 1]))
    assert canonical(df, {**schema.STATS_COLUMNS, **schema.OPTIONAL_COLUMNS})
    assert df["step"].tolist() == [0, 1, 2] and df["channel"].tolist() == [-1, 0, 1]
    assert list(df["run_id"].cat.categories) == ["r"]
    train = schema.coerce_train(pd.DataFrame({c: [1] for c in schema.TRAIN_COLUMNS}).assign(run_id="x"))
    assert canonical(train, schema.TRAIN_COLUMNS) and train["loss"].tolist() == [1.0]
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['nope'\]"):
        schema.coerce(stats_rows(metric=["nope"] * 3))


def test_empty_tables_have_every_column_canonically_typed():
    df = schema.empty()
    assert list(df.columns) == list(schema.STATS_COLUMNS) and len(df) == 0
    assert canonical(df, schema.STATS_COLUMNS)
    assert list(schema.empty(per_channel=True).columns) == [*schema.STATS_COLUMNS, "channel"]
    train = schema.empty_train()
    assert list(train.columns) == list(schema.TRAIN_COLUMNS) and canonical(train, schema.TRAIN_COLUMNS)
    schema.validate(df)
    schema.validate_train(train)


def test_concat_keeps_canonical_dtypes_and_fills_the_channel_column():
    a = schema.coerce(stats_rows(2, run_id=["a", "a"]))
    b = schema.coerce(stats_rows(1, run_id=["b"], metric=["response_channel_std"]).assign(channel=[3]))
    both = schema.concat([a, b, schema.empty()])
    assert canonical(both, {**schema.STATS_COLUMNS, **schema.OPTIONAL_COLUMNS})
    assert both["run_id"].tolist() == ["a", "a", "b"] and both["channel"].tolist() == [-1, -1, 3]
    assert sorted(both["run_id"].cat.categories) == ["a", "b"]
    assert "channel" not in schema.concat([a, a]).columns
    empty = schema.concat([])
    assert len(empty) == 0 and list(empty.columns) == list(schema.STATS_COLUMNS)
    assert len(schema.concat([schema.empty(), schema.empty()])) == 0


def test_concat_fills_param_kind_unknown_on_param_rows_of_older_tables_and_empty_elsewhere():
    old = schema.coerce(stats_rows(2, run_id=["old"] * 2, metric=["grad_norm", "response_std"]))
    new = schema.coerce(stats_rows(2, run_id=["new"] * 2, metric=["grad_norm", "grad_rel_norm"])
                        .assign(param_kind=["norm_scale", "weight"]))
    both = schema.concat([old, new])
    assert canonical(both, {**schema.STATS_COLUMNS, **schema.OPTIONAL_COLUMNS})
    assert both["param_kind"].tolist() == ["unknown", "", "norm_scale", "weight"]
    assert "param_kind" not in schema.concat([old, old]).columns
    assert list(schema.empty(model=True).columns) == [*schema.STATS_COLUMNS, *schema.RECORDER_COLUMNS]
    recorder = set(schema.RECORDER_COLUMNS)
    assert recorder == {*schema.MODEL_COLUMNS, *schema.PARAM_COLUMNS} and recorder <= set(schema.OPTIONAL_COLUMNS)
    with pytest.raises(ValueError, match=r"param_kind is int64, expected str"):
        schema.validate(stats_rows(1).assign(param_kind=[3]))


# ---------------------------------------------------------------------------------- the metric table
def test_every_metric_has_every_field():
    fields = [f.name for f in dataclasses.fields(schema.Metric)]
    assert fields == ["name", "level", "unit", "axis_title", "title", "short_title", "meaning", "log_scale",
                      "default", "recorded_by", "measured", "reference", "reference_meaning", "literature",
                      "first_step"]
    for name, m in schema.METRIC_TABLE.items():
        assert m.name == name
        for f in ("unit", "axis_title", "title", "short_title", "meaning"):
            assert isinstance(getattr(m, f), str) and getattr(m, f).strip(), (name, f)
        assert isinstance(m.log_scale, bool) and isinstance(m.default, bool), name
        assert m.level in ("layer", "block", "param"), name
        assert m.recorded_by in ("recorder", "evaluation"), name
        assert m.measured.strip() and m.depth_unit == schema.LEVELS[m.level], name
        assert (m.reference is None) == (not m.reference_meaning), name  # a reference line says what it is
        assert "He et al" not in m.meaning + m.title + m.short_title, name  # the literature only in `literature`


def test_derived_views_follow_the_table():
    table = schema.METRIC_TABLE
    assert schema.METRICS == {n: m.meaning for n, m in table.items()}
    assert schema.DEFAULT_METRICS == tuple(n for n, m in table.items() if m.default)
    assert schema.LOG_METRICS == {n for n, m in table.items() if m.log_scale}
    levels = [schema.metrics_at(level) for level in ("layer", "block", "param")]
    assert sorted(sum(levels, ())) == sorted(schema.RECORDER_METRICS)  # every recorded metric sits at one level
    assert set(table) - set(schema.RECORDER_METRICS) == {"response_std_eval"}  # measured at evaluation instead
    assert schema.metrics_at("layer") == ("response_std", "response_channel_std")
    assert schema.metrics_at("nowhere") == ()
    assert "response_channel_std" not in schema.DEFAULT_METRICS  # only with per_channel=True
    assert list(schema.RUN_COLUMNS) == list(schema.STATS_COLUMNS)[:6]


def test_the_recorder_reads_the_table():
    assert recorder.METRICS == schema.RECORDER_METRICS
    assert recorder.DEFAULT_METRICS == schema.DEFAULT_METRICS
    assert plan.BLOCK_METRICS == frozenset(schema.metrics_at("block"))
    assert list(recorder.RUN_INFO_KEYS) == list(schema.RUN_COLUMNS)
    assert {r.metric for r in plan.BLOCK_ROWS} == set(schema.metrics_at("block"))
    assert plan.LAYER_METRICS == schema.metrics_at("layer") and plan.PARAM_METRICS == schema.metrics_at("param")


def test_every_metric_the_recorder_writes_is_in_the_table():
    torch.manual_seed(0)
    model = cifar_resnet(8, branch_init="skipinit", width=4)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    with probes.Recorder(model, every=1, metrics=list(schema.RECORDER_METRICS), per_channel=True) as rec:
        F.cross_entropy(model(x), y).backward()
        rec.end_step(0)
    df = rec.frame()
    assert set(df["metric"]) == set(schema.RECORDER_METRICS)  # and nothing else: frame() validates against the table
    assert (df[df["metric"].isin(schema.metrics_at("block"))]["block"] >= 0).all()  # block rows sit in blocks
    assert set(df[df["metric"].isin(schema.metrics_at("layer"))]["layer"].astype(str)) <= {
        n for n, m in model.named_modules() if isinstance(m, blocks.NORM_TYPES)}  # layer rows at norm layers
