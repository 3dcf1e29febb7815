"""Hugging Face transformers go into the Recorder as `AutoModel*.from_config(...)` returns them: GPT-2, the
Llama-style decoder layer (Llama, Mistral, Qwen2) and BERT's post-norm encoder layer. Tiny random configs, no
download. Checks are against tensors caught with plain hooks written here and sums done by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import all_hooks_empty, assert_adds_match, values

from resviz.probes import Recorder

transformers = pytest.importorskip("transformers")

VOCAB = 50
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=2, n_positions=16,
                                            bos_token_id=0, eos_token_id=0),
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, **SMALL),
    "mistral": lambda: transformers.MistralConfig(num_key_value_heads=2, **SMALL),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, **SMALL),
    "bert": lambda: transformers.BertConfig(**SMALL),
}
FAMILY_PARTS = {  # model_type -> (layers' path, attention branch module, mlp branch module)
    "gpt2": ("transformer.h", "attn", "mlp"),
    "llama": ("model.layers", "self_attn", "mlp"),
    "mistral": ("model.layers", "self_attn", "mlp"),
    "qwen2": ("model.layers", "self_attn", "mlp"),
    "bert": ("bert.encoder.layer", "attention.output.dropout", "output.dropout"),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny nets on one thread


def create(kind: str):
    torch.manual_seed(0)
    config = CONFIGS[kind]()
    auto = transformers.AutoModelForMaskedLM if kind == "bert" else transformers.AutoModelForCausalLM
    model = auto.from_config(config)
    ids = torch.randint(0, VOCAB, (2, 7))
    return model, ids


def first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def adds_by_hand(kind: str, model, ids):
    """{layer prefix: (branch, skip, sum)} from plain hooks; the sums are added here."""
    path, attn, mlp = FAMILY_PARTS[kind]
    seen, handles = {}, []
    layers = list(enumerate(model.get_submodule(path)))

    def keep(key):
        return lambda m, a, out: seen.__setitem__(key, first(out).detach().double().clone())

    for i, layer in layers:
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, kw, i=i: seen.__setitem__((i, "in"), (a[0] if a else kw["hidden_states"]).double()),
            with_kwargs=True))
        handles.append(layer.register_forward_hook(keep((i, "out"))))
        handles.append(layer.get_submodule(attn).register_forward_hook(keep((i, "attn"))))
        handles.append(layer.get_submodule(mlp).register_forward_hook(keep((i, "mlp"))))
        if kind == "bert":
            handles.append(layer.attention.output.register_forward_hook(keep((i, "attn_out"))))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    adds = {}
    for i, layer in layers:
        x = seen[i, "in"]
        mid = seen[i, "attn_out"] if kind == "bert" else x + seen[i, "attn"]  # BERT normalises after each add
        adds[f"{path}.{i}.attn"] = (seen[i, "attn"], x, x + seen[i, "attn"])
        adds[f"{path}.{i}.mlp"] = (seen[i, "mlp"], mid, mid + seen[i, "mlp"])
        if kind != "bert":
            assert torch.allclose(mid + seen[i, "mlp"], seen[i, "out"], atol=1e-5)
    return adds


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_hf_model_recorded_as_is(kind):
    model, ids = create(kind)
    model.eval()
    want = adds_by_hand(kind, model, ids)
    with Recorder(model, every=1) as rec:
        model(input_ids=ids, labels=ids).loss.backward()
        rec.end_step(0)
    assert all_hooks_empty(model) == []
    df = rec.frame()
    assert set(df["family"]) == {f"hf {kind}"}
    assert_adds_match(df, want)
    assert list(df[df["metric"] == "sum_std"]["layer_index"]) == [0, 1, 2, 3]
    norms = values(df, "response_std")  # LayerNorm / RMSNorm layers count as norm layers
    assert len(norms) >= 5 and all(v > 0 for v in norms.values())
    assert len(values(df, "act_grad_norm")) == 2


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_recording_leaves_outputs_and_gradients_bit_identical(kind):
    model, ids = create(kind)
    twin = copy.deepcopy(model)
    model.train(), twin.train()
    torch.manual_seed(3)
    twin(input_ids=ids, labels=ids).loss.backward()
    torch.manual_seed(3)
    with Recorder(model, every=1) as rec:
        model(input_ids=ids, labels=ids).loss.backward()
        rec.end_step(0)
    torch.manual_seed(4)
    a = twin(input_ids=ids).logits
    torch.manual_seed(4)
    assert torch.equal(a, model(input_ids=ids).logits)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), n


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_zeroed_branches_give_zero_branch_std(kind):
    model, ids = create(kind)
    outs = {"gpt2": ("attn.c_proj", "mlp.c_proj"), "llama": ("self_attn.o_proj", "mlp.down_proj")}[kind]
    with torch.no_grad():
        for layer in model.get_submodule(FAMILY_PARTS[kind][0]):
            for path in outs:
                for p in layer.get_submodule(path).parameters():
                    p.zero_()
    with Recorder(model, every=1, metrics=["branch_std", "skip_std", "sum_std"]) as rec:
        model(input_ids=ids)
        rec.end_step(0)
    df = rec.frame()
    branch, skip, total = (values(df, m) for m in ("branch_std", "skip_std", "sum_std"))
    assert len(branch) == 4 and set(branch.values()) == {0.0}
    for layer, v in skip.items():
        assert total[layer.replace("probe_skip", "probe_sum")] == pytest.approx(v, rel=1e-6), layer


def test_gpt2_default_metrics_find_its_layer_norms_and_hooks_go_after_an_error():
    model, ids = create("gpt2")
    with pytest.raises(ValueError, match="boom"):
        with Recorder(model, every=1) as rec:
            model(input_ids=ids)
            raise ValueError("boom")
    assert all_hooks_empty(model) == []
    assert set(rec.metrics) >= {"response_std", "branch_std"}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_param_kind_and_grad_rel_norm_on_hf_weights(kind):
    """GPT-2's Conv1D and LLaMA's Linear matrices are weights; LayerNorm / RMSNorm scales are norm scales;
    grad_rel_norm equals ||grad|| / ||W|| taken with plain torch, for exactly the weight matrices."""
    model, ids = create(kind)
    with Recorder(model, every=1, metrics=["grad_norm", "grad_rel_norm"]) as rec:
        model(input_ids=ids, labels=ids).loss.backward()
        want = {n: (p.grad.double().norm() / p.detach().double().norm()).item()
                for n, p in model.named_parameters() if p.grad is not None}
        rec.end_step(0)
    df = rec.frame()
    kinds = dict(zip(*(df.loc[df["metric"] == "grad_norm", c].astype(str) for c in ("layer", "param_kind"))))
    block = f"{FAMILY_PARTS[kind][0]}.0"
    mlp_weight = f"{block}.mlp.c_fc.weight" if kind == "gpt2" else f"{block}.mlp.up_proj.weight"
    norm_scale = f"{block}.ln_1.weight" if kind == "gpt2" else f"{block}.input_layernorm.weight"
    embed = "transformer.wte.weight" if kind == "gpt2" else "model.embed_tokens.weight"
    assert (kinds[mlp_weight], kinds[norm_scale], kinds[embed]) == ("weight", "norm_scale", "embedding")
    if kind == "gpt2":
        assert (kinds[f"{block}.ln_1.bias"], kinds[f"{block}.mlp.c_fc.bias"]) == ("norm_shift", "bias")
    got = values(df, "grad_rel_norm")
    assert set(got) == {n for n, k in kinds.items() if k == "weight"} and mlp_weight in got
    for name, v in got.items():
        assert v == pytest.approx(want[name], rel=1e-5), name
