"""resviz.modes: each train/eval switch sets the mode it names and puts the net back exactly, even on error."""
from __future__ import annotations

import pytest
import torch

from resviz.modes import batch_stats_mode, calibrated_eval, eval_mode
from resviz.models import cifar_resnet


def _mixed_net():
    net = cifar_resnet(8, width=8).train()
    net.bn1.eval()  # one module in its own mode: every flag must come back as it was
    return net


def test_eval_mode_restores_each_modules_own_flag():
    net = _mixed_net()
    flags = {m: m.training for m in net.modules()}
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert {m: m.training for m in net.modules()} == flags


@pytest.mark.parametrize("switch", ["eval", "batch", "calibrated"])
def test_every_switch_restores_flags_buffers_and_momenta_after_an_error(switch):
    torch.manual_seed(0)
    net = _mixed_net()
    x = torch.randn(8, 3, 8, 8)
    flags = {m: m.training for m in net.modules()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = {"eval": lambda: eval_mode(net), "batch": lambda: batch_stats_mode(net),
           "calibrated": lambda: calibrated_eval(net, x)}[switch]
    with pytest.raises(RuntimeError, match="inside"):
        with ctx():
            with torch.no_grad():
                net(x)  # a train-mode pass would move the running statistics
            raise RuntimeError("inside")
    assert {m: m.training for m in net.modules()} == flags
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert net.bn1.momentum == 0.1
