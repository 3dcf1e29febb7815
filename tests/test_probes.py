"""Recorder on resviz models: every statistic against a layer-by-layer computation, steps, lifecycle, errors."""
from __future__ import annotations

import gc
import math
import tracemalloc
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    all_hooks_empty,
    by_hand,
    channel_sq_mean,
    channel_std,
    channel_var,
    norm,
    std,
    values,
)

from resviz import schema
from resviz.models import ShortcutA, cifar_resnet, iter_blocks
from resviz.probes import Recorder
from resviz.probes.reductions import write_moments


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny nets on one thread


def batch(n=8, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def net(depth=8, seed=0, **kw):
    torch.manual_seed(seed)
    return cifar_resnet(depth, **kw)


def signal_slice(model, block: str, t: torch.Tensor) -> torch.Tensor:
    """By hand: the channels of a skip tensor that carry signal. An option-A shortcut pads `pad` zero channels on
    each side (models.ShortcutA), so they are t[:, pad:C-pad]; every other block keeps all of t."""
    shortcut = getattr(model.get_submodule(block), "shortcut", None)
    if isinstance(shortcut, ShortcutA):
        return t[:, shortcut.pad : t.shape[1] - shortcut.pad]
    return t


def record_one_step(model, x, y, **kw):
    """One forward + backward inside a Recorder; returns (table, the reference tensors by hand)."""
    with torch.no_grad():
        ref, _ = by_hand(model, x)
    with Recorder(model, every=1, **kw) as rec:
        F.cross_entropy(model(x), y).backward()
        rec.end_step(0)
    return rec.frame(), ref


# ------------------------------------------------------------------------------------- statistics by hand
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"shortcut": "B"},
        {"plain": True},
        {"norm": "none"},
        {"norm": "group"},
        {"branch_init": "skipinit"},
        {"branch_init": "rezero"},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "resnet",
)
def test_activation_stats_equal_layer_by_layer_computation(kw, device):
    model = net(8, **kw).to(device)
    for b in (m for _, _, _, m in iter_blocks(model)):
        if hasattr(b, "branch_scale"):  # away from 0 so the branch is visible
            b.branch_scale.data.fill_(0.7)
    x, y = batch(device=device)
    df, ref = record_one_step(model, x, y)
    tol = dict(rel=2e-5, abs=1e-6)

    norms = [n for n in ref if n.endswith((".bn1", ".bn2")) or n == "bn1"]
    got = values(df, "response_std")
    assert list(got) == norms  # every norm slot, stem first, in depth order; no option-B shortcut norm
    for name in norms:
        assert got[name] == pytest.approx(std(ref[name]), **tol), name

    blocks = [name for _, _, name, _ in iter_blocks(model)]
    for metric, point, fn in [
        ("branch_std", "probe_branch", std),
        ("skip_std", "probe_skip", std),
        ("sum_std", "probe_sum", std),
        ("channel_sq_mean", "probe_out", channel_sq_mean),
    ]:
        got = values(df, metric)
        if metric == "skip_std" and kw.get("plain"):
            assert got == {}  # absent, not zero
            continue
        assert list(got) == [f"{b}.{point}" for b in blocks], metric
        for b, (layer, v) in zip(blocks, got.items()):
            want = fn(signal_slice(model, b, ref[layer]) if metric == "skip_std" else ref[layer])
            assert v == pytest.approx(want, **tol), (metric, layer)
    cvar = values(df, "channel_var")
    assert len(cvar) == 2 * len(blocks)
    for layer, v in cvar.items():
        assert v == pytest.approx(channel_var(ref[layer]), **tol), layer
    ratio = values(df, "branch_ratio")
    if kw.get("plain"):
        assert ratio == {}
    else:
        for b in blocks:
            branch, skip = (signal_slice(model, b, ref[f"{b}.{p}"]) for p in ("probe_branch", "probe_skip"))
            assert ratio[b] == pytest.approx(norm(branch) / norm(skip), rel=2e-5)
    assert set(df["metric"]) <= set(schema.RECORDER_METRICS)


def test_sum_is_branch_plus_skip_and_its_variance_decomposes():
    model = net(14)
    x, y = batch()
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out.detach().clone()))
        for n, m in model.named_modules()
        if n.endswith(("probe_branch", "probe_skip", "probe_sum"))
    ]
    try:
        df, _ = record_one_step(model, x, y)
    finally:
        for h in handles:
            h.remove()
    branch, skip, total = (values(df, m) for m in ("branch_std", "skip_std", "sum_std"))
    for _, _, name, _ in iter_blocks(model):
        b, s, t = seen[f"{name}.probe_branch"], seen[f"{name}.probe_skip"], seen[f"{name}.probe_sum"]
        assert torch.equal(t, b + s)  # the probe points see exactly F(x), the skip and their sum
        assert total[f"{name}.probe_sum"] == pytest.approx(std(b + s), rel=2e-5)
        bd, sd = b.double().flatten(), s.double().flatten()
        cov = ((bd - bd.mean()) * (sd - sd.mean())).sum().item() / (bd.numel() - 1)
        # the recorded skip std leaves option A's zero channels out; the decomposition needs the whole tensor's
        recorded_skip = skip[f"{name}.probe_skip"]
        whole_skip = std(s)
        assert recorded_skip == pytest.approx(std(signal_slice(model, name, s)), rel=2e-5)
        if signal_slice(model, name, s) is s:
            assert recorded_skip == pytest.approx(whole_skip, rel=2e-5)
        want = branch[f"{name}.probe_branch"] ** 2 + whole_skip**2 + 2 * cov
        assert total[f"{name}.probe_sum"] ** 2 == pytest.approx(want, rel=1e-4)


def test_per_channel_rows():
    model = net(8)
    x, y = batch()
    df, ref = record_one_step(model, x, y, per_channel=True)
    assert "channel" in df.columns
    assert (df.loc[df["metric"] != "response_channel_std", "channel"] == -1).all()
    rows = df[df["metric"] == "response_channel_std"]
    for layer, group in rows.groupby("layer", observed=True):
        want = channel_std(ref[layer]).numpy()
        assert list(group["channel"]) == list(range(len(want)))
        np.testing.assert_allclose(group["value"].to_numpy(), want, rtol=2e-5, atol=1e-6)
    plain_df, _ = record_one_step(net(8), x, y)
    assert "channel" not in plain_df.columns


def test_grad_norm_per_parameter_and_act_grad_norm_against_autograd(device):
    model = net(8).to(device)
    x, y = batch(device=device)
    ref, logits = by_hand(model, x)  # with autograd: d loss / d block output
    outs = {n: t for n, t in ref.items() if n.endswith("probe_out")}
    want_act = dict(zip(outs, torch.autograd.grad(F.cross_entropy(logits, y), list(outs.values()))))
    model.zero_grad()
    with Recorder(model, every=1) as rec:
        F.cross_entropy(model(x), y).backward()
        rec.end_step(0)
        want_grad = {n: p.grad.norm().item() for n, p in model.named_parameters()}
    df = rec.frame()
    got = values(df, "grad_norm")
    assert list(got) == [n for n, _ in model.named_parameters()]  # every parameter, dotted names
    for n, v in got.items():
        assert v == pytest.approx(want_grad[n], rel=1e-5), n
    got = values(df, "act_grad_norm")
    assert list(got) == list(outs)
    for n, v in got.items():
        assert v == pytest.approx(want_act[n].norm().item(), rel=1e-4), n
    rows = df[df["metric"] == "grad_norm"].set_index(df.loc[df["metric"] == "grad_norm", "layer"].astype(str))
    assert rows.loc["conv1.weight", ["stage", "block"]].tolist() == [0, -1]
    assert rows.loc["layer2.0.conv1.weight", ["stage", "block"]].tolist() == [2, 0]
    assert rows.loc["linear.bias", ["stage", "block"]].tolist() == [4, -1]
    assert rows["layer_index"].tolist() == list(range(len(rows)))


@pytest.mark.parametrize("branch_init", ["skipinit", "rezero", "fixup"])
def test_branch_scale_is_recorded(branch_init):
    model = net(14, branch_init=branch_init, norm="none" if branch_init == "fixup" else "batch")
    blocks = [(name, b) for _, _, name, b in iter_blocks(model)]
    for k, (_, b) in enumerate(blocks):
        b.branch_scale.data.fill_(0.1 * (k + 1))
    x, y = batch()
    df, _ = record_one_step(model, x, y)
    got = values(df, "branch_scale")
    assert list(got) == [f"{name}.branch_scale" for name, _ in blocks]
    assert list(got.values()) == pytest.approx([0.1 * (k + 1) for k in range(len(blocks))])
    assert "branch_scale" not in set(record_one_step(net(8), x, y)[0]["metric"])


def test_autocast_bf16_statistics_are_fp32_of_the_bf16_tensors():
    model = net(8)
    x, y = batch()
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out.detach().clone()))
        for n, m in model.named_modules()
        if n.endswith(("bn1", "bn2", "probe_sum"))
    ]
    try:
        with Recorder(model, every=1) as rec, torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(model(x), y).backward()
            rec.end_step(0)
    finally:
        for h in handles:
            h.remove()
    df = rec.frame()
    assert seen["layer1.0.probe_sum"].dtype == torch.bfloat16
    got = {**values(df, "response_std"), **values(df, "sum_std")}
    for name, t in seen.items():
        assert got[name] == pytest.approx(t.double().std().item(), rel=2e-5), name
    assert np.isfinite(values(df, "act_grad_norm")["layer3.0.probe_out"])


def test_nan_activations_are_kept():
    model = net(8)
    x, y = batch()
    x[0, 0, 0, 0] = float("nan")
    with Recorder(model, every=1) as rec, torch.no_grad():
        model(x)
        rec.step()
    got = values(rec.frame(), "response_std")
    assert len(got) == 7 and all(math.isnan(v) for v in got.values())


# ---------------------------------------------------------------------------------------------- the table
def test_frame_is_schema_valid_and_canonical():
    model = net(8)
    x, y = batch()
    df, _ = record_one_step(model, x, y, run_info={"run_id": "r1", "seed": 3})
    schema.validate(df)
    pd.testing.assert_frame_equal(schema.coerce(df), df)
    assert list(df.columns) == [*schema.STATS_COLUMNS, *schema.RECORDER_COLUMNS]
    first = df.iloc[0]
    assert (first["model"], first["family"]) == ("resnet8", "resviz")
    assert (first["run_id"], first["arch"], first["depth"], first["norm"], first["shortcut"], first["seed"]) == (
        "r1", "resnet", 8, "batch", "A", 3,
    )
    assert set(df["metric"]) == set(schema.DEFAULT_METRICS) - {"branch_scale"}
    stem = df[df["layer"] == "bn1"].iloc[0]
    assert (stem["stage"], stem["block"], stem["layer_index"]) == (0, -1, 0)
    plain, _ = record_one_step(net(8, plain=True), x, y)
    assert set(plain["arch"]) == {"plain"} and set(plain["shortcut"]) == {"none"}


def test_metrics_subset_only_those_rows():
    model = net(8)
    x, y = batch()
    df, _ = record_one_step(model, x, y, metrics=["sum_std", "grad_norm"])
    assert set(df["metric"]) == {"sum_std", "grad_norm"}
    df, _ = record_one_step(model, x, y, metrics="response_std")
    assert set(df["metric"]) == {"response_std"}


def test_frame_before_any_step_is_empty_with_columns():
    rec = Recorder(net(8))
    df = rec.frame()
    assert len(df) == 0 and list(df.columns) == [*schema.STATS_COLUMNS, *schema.RECORDER_COLUMNS]
    with Recorder(net(8), per_channel=True) as rec:
        df = rec.frame()
    assert len(df) == 0 and list(df.columns) == [*schema.STATS_COLUMNS, *schema.RECORDER_COLUMNS, "channel"]


# ---------------------------------------------------------------------------------------------------- steps
def train(model, rec, steps, x, y, explicit=True, epoch=None):
    for s in steps:
        F.cross_entropy(model(x), y).backward()
        if explicit:
            rec.end_step(s, epoch=None if epoch is None else epoch(s))
        else:
            rec.step()
        model.zero_grad(set_to_none=True)


def test_every_k_records_multiples_of_k_with_epochs():
    model = net(8)
    x, y = batch(4)
    with Recorder(model, every=3) as rec:
        flags = []
        for s in range(8):
            flags.append(rec.recording)
            F.cross_entropy(model(x), y).backward()
            rec.end_step(s, epoch=s / 4)
            model.zero_grad(set_to_none=True)
    df = rec.frame()
    assert flags == [s % 3 == 0 for s in range(8)]
    assert sorted(set(df["step"])) == [0, 3, 6]
    assert df.groupby("step")["epoch"].first().tolist() == [0.0, 0.75, 1.5]
    assert len(df[df["step"] == 3]) == len(df[df["step"] == 0])  # every recorded step is complete


def test_begin_step_resumes_and_step_counts_from_zero():
    model = net(8)
    x, y = batch(4)
    with Recorder(model, every=5) as rec:
        for s in range(100, 112):
            rec.begin_step(s)
            F.cross_entropy(model(x), y).backward()
            rec.end_step(s)
            model.zero_grad(set_to_none=True)
    df = rec.frame()
    assert sorted(set(df["step"])) == [100, 105, 110]
    assert df["epoch"].isna().all()
    with Recorder(net(8), every=2) as rec:
        train(rec._model, rec, range(5), x, y, explicit=False)
    assert sorted(set(rec.frame()["step"])) == [0, 2, 4]


def test_evaluation_under_no_grad_and_inference_mode(device):
    model = net(8).to(device).eval()
    x, _ = batch(device=device)
    with Recorder(model, every=1) as rec:
        with torch.no_grad():
            model(x)
        rec.step()
        with torch.inference_mode():
            model(x)
        rec.step()
    df = rec.frame()
    assert not {"grad_norm", "act_grad_norm"} & set(df["metric"])
    a, b = values(df, "response_std", step=0), values(df, "response_std", step=1)
    assert a == pytest.approx(b) and len(a) == 7
    with torch.no_grad():
        ref, _ = by_hand(model, x)
    assert a["layer2.0.bn2"] == pytest.approx(std(ref["layer2.0.bn2"]), rel=2e-5)


def test_drain_returns_new_rows_and_flush_every_does_not_change_the_table():
    x, y = batch(4)
    frames = []
    for flush_every in (1, 3, 64):
        model = net(8)
        with Recorder(model, every=1, flush_every=flush_every) as rec:
            train(model, rec, range(4), x, y)
            first = rec.drain()
            train(model, rec, range(4, 7), x, y)
            second = rec.drain()
            assert len(rec.drain()) == 0
            train(model, rec, range(7, 8), x, y)
        assert sorted(set(first["step"])) == [0, 1, 2, 3]
        assert sorted(set(second["step"])) == [4, 5, 6]
        assert sorted(set(rec.frame()["step"])) == [7]  # frame(): what was not drained, after the with too
        frames.append(schema.concat([first, second, rec.frame()]))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    pd.testing.assert_frame_equal(frames[0], frames[2])


def test_paused_keeps_a_mid_step_evaluation_out():
    model = net(8)
    x, y = batch(4)
    other = torch.randn(4, 3, 32, 32) * 3
    with Recorder(model, every=1) as rec:
        F.cross_entropy(model(x), y).backward()
        with rec.paused(), torch.no_grad():
            assert not rec.recording
            model(other)  # not recorded: the step keeps the training batch's statistics
        assert rec.recording
        rec.end_step(0)
    with torch.no_grad():
        ref, _ = by_hand(model, x)
    got = values(rec.frame(), "sum_std")["layer2.0.probe_sum"]
    assert got == pytest.approx(std(ref["layer2.0.probe_sum"]), rel=2e-5)


@pytest.mark.parametrize("central", [False, True], ids=["sums", "var_mean"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "bf16", "2d"])
def test_write_moments_both_ways(central, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 7, 3, generator=g) * torch.arange(1, 6).view(1, 5, 1, 1) + 2
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "bf16":
        x = x.bfloat16()
    elif layout == "2d":
        x = x[:, :, 0, 0]
    first, second = torch.zeros(5), torch.zeros(5)
    write_moments(x, first, second, central)
    xd = x.double().transpose(0, 1).reshape(5, -1)  # (C, N*H*W)
    mean, var = xd.mean(1), xd.var(1, unbiased=False)
    if central:
        torch.testing.assert_close(first.double(), mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(second.double(), var, rtol=1e-5, atol=1e-6)
    else:
        n = xd.shape[1]
        torch.testing.assert_close(first.double(), mean * n, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(second.double(), (var + mean**2) * n, rtol=1e-6, atol=1e-5)
    assert first.dtype == second.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ lifecycle
def test_hooks_removed_after_body_raises_and_rows_kept():
    model = net(8)
    x, y = batch(4)
    rec = Recorder(model, every=1)
    with pytest.raises(KeyError, match="boom"):
        with rec:
            assert all_hooks_empty(model)  # hooks exist inside
            train(model, rec, range(2), x, y)
            model(x)
            raise KeyError("boom")
    assert all_hooks_empty(model) == []
    assert not torch.nn.modules.module._global_forward_hooks
    rec.close()  # idempotent
    assert sorted(set(rec.frame()["step"])) == [0, 1]
    with pytest.raises(RuntimeError, match="not active"):
        rec.end_step(2)


def test_reentry_and_two_recorders():
    model, other = net(8), net(8, seed=1)
    x, y = batch(4)
    rec = Recorder(model, every=1)
    with rec:
        with pytest.raises(RuntimeError, match="already active"):
            rec.__enter__()
        with pytest.raises(RuntimeError, match="already recorded by another active Recorder"):
            with Recorder(model.layer2, every=1):
                pass
        with Recorder(other, every=1) as rec2:  # a different model at the same time: independent
            train(model, rec, range(1), x, y)
            train(other, rec2, range(1), x, y)
    for m, r in ((model, rec), (other, rec2)):
        with torch.no_grad():
            ref, _ = by_hand(m, x)
        assert values(r.frame(), "response_std")["layer3.0.bn2"] == pytest.approx(std(ref["layer3.0.bn2"]), rel=2e-5)
    with rec:  # entering again after the exit continues the same table
        train(model, rec, range(1, 2), x, y)
    assert sorted(set(rec.frame()["step"])) == [0, 1]
    assert all_hooks_empty(model) == [] and all_hooks_empty(other) == []


def test_hooks_do_not_change_outputs_or_gradients():
    x, y = batch(4)
    a, b = net(8), net(8)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (a, b))
    with Recorder(a, every=1, per_channel=True) as rec:
        for s in range(3):
            out_a, out_b = a(x), b(x)
            assert torch.equal(out_a, out_b)
            F.cross_entropy(out_a, y).backward()
            F.cross_entropy(out_b, y).backward()
            for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
                assert torch.equal(pa.grad, pb.grad), n
            rec.end_step(s)
            opt_a.step(), opt_b.step(), opt_a.zero_grad(), opt_b.zero_grad()
    for (n, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), n


def test_no_graph_kept_alive():
    model = net(8)
    x, y = batch(4)
    refs = []
    h = model.layer2[0].probe_out.register_forward_hook(lambda m, a, out: refs.append(weakref.ref(out)))
    try:
        with Recorder(model, every=1) as rec:
            loss = F.cross_entropy(model(x), y)  # forward with a graph, no backward
            rec.end_step(0)
            del loss
            gc.collect()
            assert refs[0]() is None  # nothing (the Recorder included) keeps the activation or its graph
    finally:
        h.remove()


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_memory_flat_over_1000_recorded_steps():
    model = net(8)
    x, y = batch(2)
    live = lambda: sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))  # noqa: E731
    with Recorder(model, every=1, flush_every=16) as rec:
        train(model, rec, range(100), x, y)
        rec.drain()
        gc.collect()
        tracemalloc.start()
        tensors_before, (mem_before, _) = live(), tracemalloc.get_traced_memory()
        train(model, rec, range(100, 500), x, y)  # no drain: the host keeps the table, nothing else
        rec.flush()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - mem_before
        table = rec.drain()
        table_bytes = int(table.memory_usage(deep=True).sum())
        del table
        gc.collect()
        mem_mid = tracemalloc.get_traced_memory()[0]
        for start in range(500, 1000, 100):  # draining as the training loop does: flat
            train(model, rec, range(start, start + 100), x, y)
            rec.drain()
        gc.collect()
        mem_after = tracemalloc.get_traced_memory()[0]
        tensors_after = live()
        tracemalloc.stop()
    assert rec.current_step == 1000
    print(f"grown {grown} B, table {table_bytes} B, drained phase {mem_after - mem_mid} B")
    assert 0 < grown < table_bytes  # what 400 steps retained is smaller than their table
    assert mem_after - mem_mid < 16_000, mem_after - mem_mid  # a few kB of allocator noise, not per step
    assert tensors_after == tensors_before


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_arguments_name_the_fix():
    model = net(8)
    with pytest.raises(ValueError, match=r"every=0 must be an integer >= 1, e\.g\. every=20"):
        Recorder(model, every=0)
    with pytest.raises(ValueError, match=r"every=1\.5 must be an integer"):
        Recorder(model, every=1.5)
    with pytest.raises(ValueError, match=r"flush_every=0 must be an integer >= 1"):
        Recorder(model, flush_every=0)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['std'\]; valid: response_std, branch_std"):
        Recorder(model, metrics=["std"])
    with pytest.raises(ValueError, match=r"run_info key 'lr' is unknown; valid: run_id, arch"):
        Recorder(model, run_info={"lr": 0.1})
    with pytest.raises(ValueError, match=r"run_info\['seed'\]='1' must be an int"):
        Recorder(model, run_info={"seed": "1"})
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        Recorder(lambda x: x)
    with Recorder(model) as rec:
        with pytest.raises(ValueError, match=r"step=-1 must be an integer >= 0"):
            rec.begin_step(-1)


def test_model_without_norms_or_blocks_is_refused():
    mlp = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    message = r"found no norm layers and no residual blocks in Sequential.*metrics=\['grad_norm'\]"
    with pytest.raises(ValueError, match=message):
        Recorder(mlp)
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with Recorder(small, every=1, metrics=["grad_norm"]) as rec:
        small(torch.randn(2, 3, 2, 2)).sum().backward()
        rec.step()
    assert values(rec.frame(), "grad_norm") == pytest.approx(
        {n: p.grad.norm().item() for n, p in small.named_parameters()}
    )
    assert set(rec.frame()["stage"]) == {-1}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_recording_never_synchronises():
    model = net(8).cuda()
    x, y = batch(8, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, every=2, flush_every=2, per_channel=True) as rec:
        torch.cuda.set_sync_debug_mode("error")
        try:
            for s in range(9):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                rec.end_step(s)
                opt.step()
                opt.zero_grad(set_to_none=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    df = rec.frame()
    assert sorted(set(df["step"])) == [0, 2, 4, 6, 8]
    assert np.isfinite(df["value"]).all()
