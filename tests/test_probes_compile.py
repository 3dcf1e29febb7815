"""A compiled resviz model records the same statistics as the eager one (ResNet-8, batch 4, CPU).

The hooks are traced into the compiled graph; a guard on the Recorder's recording flag gives one graph with
and one without statistics. The backend defaults to "aot_eager": it runs dynamo's tracing of the hooks, the
guards and AOT autograd's functionalisation of the in-place writes, everything the Recorder relies on, in
~15 s; inductor adds only kernel code generation but takes ~100 s cold on the 2-core CI machine. Set
RESVIZ_COMPILE_BACKEND=inductor to run it with inductor.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import all_hooks_empty

from resviz.models import cifar_resnet
from resviz.probes import Recorder

BACKEND = os.environ.get("RESVIZ_COMPILE_BACKEND", "aot_eager")


def train(recorded, model, call, x, y, steps):
    """`steps` forward + backward passes of `model` through `call` (itself or its compiled wrapper), with
    `recorded` recorded. No optimiser step: a few SGD steps would amplify inductor's rounding differences in
    the weights (1.5 % in small gradient norms after two momentum steps), which says nothing about recording."""
    with Recorder(recorded, every=2) as rec:
        for s in range(steps):
            F.cross_entropy(call(x), y).backward()
            rec.end_step(s)
            model.zero_grad(set_to_none=True)
        stage = rec._stage  # the device vector hooks write into, to see that nothing writes after the exit
    return rec, stage


@pytest.mark.slow
def test_compiled_model_records_like_eager():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = cifar_resnet(8)
        eager = copy.deepcopy(model)
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        compiled = torch.compile(model, backend=BACKEND)
        for m in (compiled, eager):  # compiled before any Recorder, in the same mode: entering one must
            F.cross_entropy(m(x), y).backward()  # still bring its hooks into the graph (pytorch#117758)
        model.zero_grad(set_to_none=True)
        eager.zero_grad(set_to_none=True)
        # the Recorder given the compiled wrapper, then (as resviz.train does) the module inside it
        for recorded in (compiled, model):
            rec_c, stage = train(recorded, model, compiled, x, y, steps=3)
            rec_e, _ = train(eager, eager, eager, x, y, steps=3)
            assert not torch._dynamo.utils.counters["graph_break"]  # hooks traced into the graph, no breaks
            a, b = rec_c.frame(), rec_e.frame()
            assert sorted(set(a["step"])) == [0, 2] and len(a) == len(b) > 0
            keys = [c for c in a.columns if c != "value"]
            pd.testing.assert_frame_equal(a[keys], b[keys])
            np.testing.assert_allclose(a["value"], b["value"], rtol=1e-4, atol=1e-6)
            assert all_hooks_empty(model) == []
            before = stage.clone()
            F.cross_entropy(compiled(x), y).backward()  # after the exit: recompiled without the hooks
            assert torch.equal(stage, before)
            assert len(rec_c.frame()) == len(a)
            model.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
