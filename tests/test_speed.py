"""Speed switches of the training loop: compiled recording equals eager, the compiler fallback, the sync-free
step (CUDA), the out-of-memory probe (CUDA), resuming across switch changes, and the reference loop's inputs.

Timings live in benchmarks/train_speed.py and benchmarks/sweep_share.py, never here.
The compile tests use the "aot_eager" backend unless RESVIZ_COMPILE_BACKEND names another (e.g. inductor):
dynamo traces the Recorder's hooks into the graph and AOT autograd functionalises their in-place writes either
way; inductor adds code generation, ~60 s cold on the 2-core CI machine.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from resviz import runfolder, schema
from resviz.cli import main
from resviz.train import TrainConfig, train
from resviz.train.speed import COMPILE_BACKEND_ENV, SYNC_DEBUG_ENV

ROOT = Path(__file__).resolve().parents[1]
BACKEND = os.environ.get(COMPILE_BACKEND_ENV, "aot_eager")

# ResNet-8 at width 8 on the built-in digits, recording every 2nd step. lr=1e-4 keeps the weights nearly fixed,
# so a compiler's rounding is not amplified by training: at lr=0.1 inductor's fused BatchNorm reductions move
# BN-bias gradient norms by up to 25 % after 4 SGD steps (measured), which says nothing about recording.
TINY = TrainConfig(dataset="digits", depth=8, width=8, steps=10, batch_size=32, lr=1e-4, log_every=5,
                   eval_every=10, checkpoint_every=5, record_every=2, eval_batch_size=400, progress=False)
KEY = ["step", "layer", "metric"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root, **changes) -> TrainConfig:
    return dataclasses.replace(TINY, root=data_root, **changes)


def tables(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    stats = pd.read_parquet(result.folder / "stats.parquet").astype({"layer": str, "metric": str})
    return stats.sort_values(KEY).reset_index(drop=True), pd.read_parquet(result.folder / "metrics.parquet")


def assert_same_records(a, b, rtol: float, atol: float) -> None:
    """The same (step, layer, metric) rows with values within rtol/atol, and the same training curve."""
    (sa, ma), (sb, mb) = tables(a), tables(b)
    assert len(sa) == len(sb) > 0
    pd.testing.assert_frame_equal(sa[KEY], sb[KEY])
    recorded = sa[sa["metric"].isin(schema.RECORDER_METRICS)]  # evaluation-time rows sit at evaluation steps
    assert sorted(recorded["step"].unique()) == list(range(0, TINY.steps, TINY.record_every))
    np.testing.assert_allclose(sb["value"], sa["value"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=rtol)
    one_image = 1 / (TINY.log_every * TINY.batch_size)  # rounding may flip a near-tied argmax, not more
    np.testing.assert_allclose(mb["train_error"], ma["train_error"], rtol=0, atol=1.5 * one_image if rtol else 0)


# ---------------------------------------------------------------------------------------- CPU
@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_compiled_training_records_like_eager(tmp_path, data_root, monkeypatch):
    """train(compile=True): the Recorder's hooks are traced into the compiled graphs (one with statistics, one
    without), with no graph break, and record what eager training records. Tolerance rtol 1e-4: measured 0
    (bit-identical) with aot_eager and at most 6e-6 with inductor."""
    import torch._dynamo

    monkeypatch.setenv(COMPILE_BACKEND_ENV, BACKEND)
    eager = train(tiny(data_root), tmp_path / "eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled = train(tiny(data_root, compile=True), tmp_path / "compiled")
        counters = torch._dynamo.utils.counters
        assert counters["stats"]["unique_graphs"] == 2  # recording and non-recording steps
        assert not counters["graph_break"]
    finally:
        torch._dynamo.reset()
    assert compiled.status == eager.status == "done"
    assert_same_records(eager, compiled, rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_compile_without_a_cxx_compiler_falls_back_to_eager(tmp_path, data_root):
    """A real missing compiler: inductor reads the C++ compiler from $CXX and fails at the first compiled step
    (compiling is lazy). The run warns in one line, trains eager, and records exactly what an eager run does."""
    script = (
        "import sys, dataclasses, json; from resviz.train import TrainConfig, train; "
        "c = TrainConfig.from_dict(json.loads(sys.argv[1])); print(train(c, sys.argv[2]).status)"
    )
    config = tiny(data_root, compile=True)
    env = {**os.environ, "CXX": "/nonexistent/c++", "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),  # no cached kernels to fall back on
           "PYTHONWARNINGS": "default"}
    env.pop(COMPILE_BACKEND_ENV, None)  # inductor: the backend that needs a C++ compiler
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config.to_dict()), str(tmp_path / "fallback")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    warned = [line for line in proc.stderr.splitlines() if "UserWarning" in line]
    assert len(warned) == 1, proc.stderr
    assert "torch.compile failed at its first step (" in warned[0] and "C++ compiler" in warned[0]
    assert warned[0].endswith("training eager instead")
    fallback = runfolder.read_status(tmp_path / "fallback" / config.run_id)
    assert fallback["status"] == "done"
    eager = train(tiny(data_root), tmp_path / "eager")
    fell_back = dataclasses.replace(eager, folder=tmp_path / "fallback" / config.run_id)
    assert_same_records(eager, fell_back, rtol=0, atol=0)  # BN buffers and grads restored before the redo


def test_speed_switches_are_checked_and_resume_safe(tmp_path, data_root, capsys):
    code = main(["train", "--dataset", "digits", "--root", data_root, "--compile-mode", "fastest",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "compile_mode='fastest' is unknown; use one of: default, reduce-overhead" in err
    # a run folder written before these switches existed resumes (they do not change the numbers)
    first = train(tiny(data_root), tmp_path)
    config_json = first.folder / "config.json"
    old = {k: v for k, v in json.loads(config_json.read_text()).items() if k not in ("compile_mode", "cudnn_benchmark")}
    config_json.write_text(json.dumps(old))
    again = train(tiny(data_root, compile_mode="reduce-overhead", cudnn_benchmark=False), tmp_path)
    assert again.status == "done" and again.step == first.step


def test_reference_loop_sees_the_same_images():
    """benchmarks/reference_loop.py feeds the model what resviz's loop does (PIL ToTensor + Normalize vs the
    device-side uint8 normalisation), so the speed comparison is like for like."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from reference_loop import reference_loader
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from resviz.loader import DeviceLoader

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(12) % 10
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    loader = reference_loader(images, labels, mean=mean, std=std, batch_size=4, workers=0, augment=False,
                              shuffle=False)
    config = TrainConfig(batch_size=4, augment=False, seed=0)
    stream = DeviceLoader(images, labels, batch_size=config.batch_size, train=True, mean=mean, std=std,
                          device="cpu", seed=config.seed, augment=config.augment)  # as train() makes it
    ref = torch.cat([x for x, _ in loader])  # (12, 3, 32, 32) in order
    ours, ours_y = stream.batch(0)
    order = stream.order(0)[:4]
    torch.testing.assert_close(ours, ref[order], rtol=0, atol=2e-6)
    assert torch.equal(ours_y, labels[order])
    augmented = next(iter(reference_loader(images, labels, mean=mean, std=std, batch_size=12, workers=0,
                                           augment=True, shuffle=False)))[0]
    assert augmented.shape == ref.shape and not torch.equal(augmented, ref)  # crops and flips applied


# ---------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "switches",
    [dict(), dict(channels_last=True, amp=True),
     dict(channels_last=True, amp=True, compile=True, compile_mode="reduce-overhead")],
    ids=["eager", "channels_last+bf16", "compiled+cudagraphs"],
)
def test_no_host_sync_between_log_boundaries(tmp_path, data_root, monkeypatch, switches):
    monkeypatch.setenv(SYNC_DEBUG_ENV, "error")
    monkeypatch.delenv(COMPILE_BACKEND_ENV, raising=False)
    torch.cuda.set_sync_debug_mode("error")  # the mode works on this device: a sync raises
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            torch.ones((), device="cuda").item()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    benchmark = torch.backends.cudnn.benchmark
    # 4 intervals of 5 steps: steps 5..19 run under set_sync_debug_mode("error"), recording every 2nd step
    # (end_step queues on the device), with evaluations and checkpoints at the boundaries in between
    result = train(tiny(data_root, device="cuda", steps=20, eval_every=10, checkpoint_every=10, **switches),
                   tmp_path)
    assert result.status == "done", runfolder.read_status(result.folder)
    assert torch.cuda.get_sync_debug_mode() == 0 and torch.backends.cudnn.benchmark == benchmark  # restored


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_cuda_recording_matches_eager(tmp_path, data_root, monkeypatch, mode):
    """Statistics computed in the compiled graph (and, with reduce-overhead, around CUDA-graph replays) equal
    eager's at every recorded step. TF32 off and cudnn.benchmark off so both runs use fp32 arithmetic; the
    tolerance (rtol 1e-3) covers inductor's fused reduction order."""
    import torch._dynamo

    monkeypatch.delenv(COMPILE_BACKEND_ENV, raising=False)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        eager = train(tiny(data_root, device="cuda", cudnn_benchmark=False), tmp_path / "eager")
        torch._dynamo.reset()
        compiled = train(tiny(data_root, device="cuda", cudnn_benchmark=False, compile=True, compile_mode=mode),
                         tmp_path / "compiled")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        torch._dynamo.reset()
    assert_same_records(eager, compiled, rtol=1e-3, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_out_of_gpu_memory_names_the_largest_batch_that_fits(tmp_path, data_root, capsys):
    """Real OOM under a 1 GiB cap on this process's CUDA memory: the run is marked failed, the message names
    the largest batch the halving probe found, and that batch does train under the same cap."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(2**30 / total)
    try:
        big = dict(device="cuda", depth=56, width=16, batch_size=1408, steps=2, log_every=1, eval_every=2,
                   checkpoint_every=2)
        with pytest.raises(RuntimeError, match=r"out of GPU memory for depth=56 at batch_size=1408 .*"
                                               r"the largest batch that fits is (\d+); use --batch-size \1") as err:
            train(tiny(data_root, **big), tmp_path / "big")
        fits = int(err.value.args[0].rsplit(" ", 1)[1])
        assert 1 <= fits <= 704
        status = runfolder.read_status(tmp_path / "big" / tiny(data_root, **big).run_id)
        assert status["status"] == "failed" and f"the largest batch that fits is {fits}" in status["reason"]
        code = main(["train", "--dataset", "digits", "--root", data_root, "--device", "cuda", "--depth", "56",
                     "--batch-size", "1408", "--steps", "2", "--no-progress", "--out", str(tmp_path / "cli")])
        assert code == 2 and "use --batch-size" in capsys.readouterr().err  # one line, no traceback
        torch.cuda.empty_cache()
        ok = train(tiny(data_root, **{**big, "batch_size": fits}), tmp_path / "fits")
        assert ok.status == "done"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
