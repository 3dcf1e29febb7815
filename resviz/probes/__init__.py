"""Recorder: per-layer statistics of a network while it trains or evaluates, reduced on the device.

    with Recorder(model, every=20) as rec:          # hooks exist only inside the block
        for step in range(steps):
            loss_fn(model(x), y).backward()
            rec.end_step(step, epoch=step * B / N)  # grad norms, queue the step's stats; no host sync
            opt.step(); opt.zero_grad(set_to_none=True)
    df = rec.frame()                                # the tidy table of schema.py

The package, stage by stage: `plan.py` decides what to observe (norm layers, residual blocks, parameters) and
which rows follow; `blocks.py` is the registry saying where each block family's branch, skip, sum and output
are; `reductions.py` holds the arithmetic (moments on the device, statistics on the host); `recorder.py` the
lifecycle (hooks inside a `with`, staging, flushes, the table). The metrics themselves (names, levels, units,
meanings) are `resviz.schema.METRIC_TABLE`.

Statistics are taken on steps with `step % every == 0`. Each observed tensor x (N, C, *) is reduced inside its
hook, at once (later in-place ops such as torchvision's `out += identity` cannot alter it), to per-channel first
and second moments in fp32 written into one preallocated device vector; `end_step` adds the gradient norms and
copies the vector into a device ring buffer of `flush_every` rows. The host sees the numbers once per flush;
the table's statistics are derived there in float64.

Rows (metric -> `layer` value; `layer_index` counts along depth within the metric, from 0):
    response_std          every norm layer's output (BatchNorm, GroupNorm, InstanceNorm, resviz NoNorm, so a
                          norm="none" net gives the conv output): He et al. Fig. 7's quantity. layer = the norm
                          module ("bn1", "layer2.3.bn2"). Norm layers on a skip path (option-B `shortcut.1`,
                          torchvision `downsample.1`) are not 3x3 layers and are left out.
    response_channel_std  per_channel=True: the same per channel (column `channel`; other rows channel=-1)
    branch_std            "layerS.i.probe_branch": end of F(x) before the addition (torchvision: the block's
                          last BN, bn2 / bn3)
    skip_std              "layerS.i.probe_skip": identity, option A or the projection (torchvision: downsample
                          output or the block input). Absent for plain nets. At an option-A downsampling
                          block over the channels that carry signal: ShortcutA's zero padding is left out.
    sum_std               "layerS.i.probe_sum": branch + skip before the block's ReLU (plain nets: the branch)
    branch_ratio          "layerS.i" (the block): ||F(x)|| / ||skip||. Absent for plain nets. Option A
                          downsampling: both norms over the skip's signal channels.
    channel_sq_mean       "layerS.i.probe_out": mean over C of (mean over N,H,W)^2 (Brock et al. 2021)
    channel_var           "layerS.i.probe_out" and "layerS.i.probe_branch": mean over C of the (biased)
                          variance over N,H,W; both rows of block k have layer_index k
    act_grad_norm         "layerS.i.probe_out": ||d loss / d block output|| (a tensor hook, recording steps only)
    grad_norm             every parameter, layer = its dotted name ("layer1.0.conv1.weight"), after backward()
    grad_rel_norm         every conv/linear weight: ||grad|| / ||W|| (layer_index: the parameter's, as grad_norm)
    Parameter rows carry `param_kind` ("weight", "norm_scale", "norm_shift", "bias", "embedding", "other";
    blocks.param_kind); other rows have "".
    branch_scale          "layerS.i.branch_scale": the scalar of SkipInit / ReZero / Fixup blocks
For torchvision ResNets the block points are virtual and named like resviz's probes ("layer1.0.probe_sum").
Std is unbiased over N*C*H*W (torch.std). stage: 0 stem, 1.. stages, last stage + 1 for the head (4 for
resviz models, 5 for torchvision ResNets); block: index within its stage, -1 outside blocks.

Blocks are found through `blocks.BLOCK_SPECS`, one entry per family: resviz-style probe points (children
`probe_branch`, `probe_skip`, `probe_sum`, `probe_out` that are `resviz.models.Probe` modules; mark your own block
the same way), torchvision's BasicBlock and Bottleneck, timm's ResNet, ResNetV2, ConvNeXt and ViT blocks, and
Hugging Face GPT-2, Llama-style (Llama, Mistral, Qwen2, Qwen3) and BERT-style (BERT, RoBERTa) layers. Any other
class is added with `register_block(cls, branch=..., skip=...)` (docs/blocks.md) and removed with
`unregister_block(cls)`. A module that looks like a residual block (class name with Block/Bottleneck/Residual, or
a `downsample`/`shortcut` child) but is none of these is refused when block metrics are asked for.

Order within a step: begin_step (optional) -> forward -> backward -> end_step. If a step runs several forward
passes, the last one's statistics are kept; `with rec.paused():` keeps e.g. a mid-training evaluation out.
Compiled models (`torch.compile(model)` or `model.compile()`; give the Recorder either the compiled wrapper or
the module inside it): the hooks are traced into the graph, and a guard on the recording flag gives one graph
with and one without statistics. Entering and leaving the Recorder drop dynamo's compiled code for the forward
methods of the model's module classes, because hooks added or removed after compiling are otherwise ignored
(pytorch#117758); act_grad_norm's tensor hooks write in place and so stay inside the graph. Under CUDA graphs
(mode="reduce-overhead") the statistics are copied out at end_step, before the next replay.
"""
from resviz.probes.blocks import register_block, unregister_block
from resviz.probes.recorder import Recorder

__all__ = ["Recorder", "register_block", "unregister_block"]
