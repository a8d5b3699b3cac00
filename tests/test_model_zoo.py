"""The zoo's variants, each against a reference: HF's own helpers (T5 buckets, BLOOM ALiBi, sinusoids)
or a hand computation; caches, padding and parameter counts for every variant; bad combinations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmlab.errors import UserError
from llmlab.model import KVCache, ModelConfig, Transformer, num_params
from llmlab.model.hf import load_hf_dir, save_hf_dir

VARIANTS = {
    "sinusoidal": {"position": "sinusoidal"},
    "alibi": {"position": "alibi", "num_attention_heads": 4},
    "t5-bias": {"position": "t5", "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16},
    "nopos": {"position": "none"},
    "partial-rope-ntk": {"partial_rotary_factor": 0.5, "rope_scaling": {"rope_type": "ntk", "factor": 2.0}},
    "post-norm": {"norm_placement": "post", "norm": "layernorm"},
    "deepnorm": {"norm_placement": "post", "deepnorm": True, "norm": "layernorm"},
    "sandwich": {"norm_placement": "sandwich"},
    "qk-norm-emb-ln": {"qk_norm": True, "embedding_layernorm": True},
    "geglu-exact": {"mlp": "geglu", "hidden_act": "gelu"},
    "reglu": {"mlp": "reglu"},
    "relu-mlp": {"mlp": "relu", "mlp_bias": True},
    "silu-mlp": {"mlp": "silu"},
    "sliding": {"sliding_window": 3},
    "strided-sparse": {"sparse_stride": 3},
    "softcap": {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0},
    "parallel-biases": {"parallel_block": True, "attention_bias": True, "mlp_bias": True, "lm_head_bias": True,
                        "tie_word_embeddings": False},
    "moe-shared": {"num_local_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
                   "moe_intermediate_size": 16},
    "flash": {"attn_implementation": "flash"},
}


def _cfg(**kw):
    """Built afresh (dataclasses.replace would carry derived fields such as hidden_act along)."""
    base = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=64)
    return ModelConfig(**{**base, **kw})


def _model(tiny_config, kw):
    torch.manual_seed(0)
    m = Transformer(_cfg(**kw)).eval()
    with torch.no_grad():  # non-trivial gains/biases/bias tables
        for n, p in m.named_parameters():
            if p.dim() == 1 or "relative_attention_bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(params=list(VARIANTS))
def variant(request, tiny_config):
    return _model(tiny_config, VARIANTS[request.param])


def test_every_variant_counts_caches_pads_and_round_trips(variant, tmp_path):
    cfg = variant.config
    assert variant.num_params() == num_params(cfg)
    assert variant.num_params(non_embedding=True) == num_params(cfg, non_embedding=True)
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = variant(ids)
        cache = KVCache.for_model(variant, 2, 32)
        parts = [variant(ids[:, :7], cache=cache)] + [variant(ids[:, t:t + 1], cache=cache) for t in range(7, 11)]
        assert (torch.cat(parts, 1) - full).abs().max() < 1e-4
        assert (variant(ids, last_only=True)[:, 0] - full[:, -1]).abs().max() < 1e-5
        # left padding: the padded row's real tokens give the unpadded logits
        pad = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:1, :8]], 1)
        am = torch.cat([torch.zeros(1, 3), torch.ones(1, 8)], 1).long()
        assert (variant(pad, attention_mask=am)[:, 3:] - variant(ids[:1, :8])).abs().max() < 1e-4
    save_hf_dir(variant, tmp_path / "m")
    with torch.no_grad():
        assert (load_hf_dir(tmp_path / "m")(ids) - full).abs().max() < 1e-5  # flash reloads as sdpa


def test_causality_for_every_variant(variant):
    ids = torch.randint(0, 97, (1, 10))
    ids2 = ids.clone()
    ids2[0, 6:] = (ids2[0, 6:] + 1) % 97
    with torch.no_grad():
        assert (variant(ids)[:, :6] - variant(ids2)[:, :6]).abs().max() < 1e-5


def test_training_step_every_variant(variant):
    variant.train()
    ids = torch.randint(0, 97, (2, 9))
    loss = variant.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in variant.parameters() if p.requires_grad)


def test_sinusoidal_matches_hf_table():
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    from llmlab.model.positions import sinusoidal_table
    ref = torch.empty(50, 16)
    create_sinusoidal_embeddings(50, 16, ref)
    assert (sinusoidal_table(50, 16) - ref).abs().max() < 1e-6


@pytest.mark.parametrize("heads", [4, 6, 12])
def test_alibi_slopes_match_bloom(heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from llmlab.model.positions import alibi_slopes
    ref = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32).view(heads, 2)[:, 1]  # slope * position 1
    assert torch.allclose(alibi_slopes(heads), ref)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_match_hf(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    from llmlab.model.positions import t5_bucket
    rel = torch.arange(-300, 300)[None]
    ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    assert torch.equal(t5_bucket(rel, bidirectional, 32, 128), ref)


def test_masks_by_hand(tiny_config):
    from llmlab.model.masks import keep_mask
    cfg = _cfg(sliding_window=3)
    m = keep_mask(cfg, 6, 0, None, "cpu")[0, 0]
    assert m[5].tolist() == [False, False, False, True, True, True]
    cfg = _cfg(sparse_stride=3)
    m = keep_mask(cfg, 10, 0, None, "cpu")[0, 0]
    assert m[9].nonzero().flatten().tolist() == [0, 3, 6, 7, 8, 9]  # every 3rd back + the last 3


def test_softcap_and_deepnorm_by_hand(tiny_config):
    from llmlab.model.attention import eager_attention
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    s = 2.0 * torch.tanh(s / 2.0)
    s = s.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -math.inf)
    assert torch.allclose(eager_attention(q, k, v, None, 1 / math.sqrt(8), 2.0, True), s.softmax(-1) @ v, atol=1e-6)
    m = _model(tiny_config, VARIANTS["deepnorm"])
    blk, x = m.model.layers[0], torch.randn(1, 4, 32)
    alpha = (2 * 2) ** 0.25
    with torch.no_grad():
        h = blk.input_layernorm(alpha * x + blk.self_attn(x, m.rope(torch.arange(4), x.dtype)))
        want = blk.post_attention_layernorm(alpha * h + blk.mlp(h))
        assert torch.allclose(blk(x, m.rope(torch.arange(4), x.dtype)), want, atol=1e-6)
    beta = (8 * 2) ** -0.25  # xavier std gain*sqrt(2/(fan_in+fan_out)) on v_proj (32 -> 16)
    torch.manual_seed(0)
    stds = [Transformer(m.config).model.layers[i].self_attn.v_proj.weight.std().item() for i in range(2)]
    assert abs(sum(stds) / 2 - beta * math.sqrt(2 / 48)) < 0.02


def test_glu_family_by_hand():
    from llmlab.model.mlp import make_mlp
    x = torch.randn(3, 8)
    for kind, act, fn in [("swiglu", None, F.silu), ("geglu", "gelu", F.gelu), ("reglu", None, F.relu),
                          ("geglu", "gelu_pytorch_tanh", lambda t: F.gelu(t, approximate="tanh"))]:
        m = make_mlp(kind, 8, 16, False, act)
        with torch.no_grad():
            want = (fn(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T)) @ m.down_proj.weight.T
            assert torch.allclose(m(x), want, atol=1e-6)


def test_alibi_extrapolates_past_the_trained_context(tiny_config):
    m = _model(tiny_config, {"position": "alibi", "max_position_embeddings": 8})
    with torch.no_grad():
        assert m(torch.randint(0, 97, (1, 20))).shape == (1, 20, 97)


@pytest.mark.parametrize("kw,needle", [
    ({"position": "alibi", "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling needs position=rope"),
    ({"num_local_experts": 2, "num_experts_per_tok": 3}, "num_experts_per_tok 3"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size 30 is not divisible by num_attention_heads"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope_type 'longrope'"),
    ({"deepnorm": True}, "deepnorm"),
    ({"mlp": "swish-glu"}, "mlp 'swish-glu'"),
])
def test_bad_combinations_are_one_line_user_errors(kw, needle):
    with pytest.raises(UserError, match=needle) as e:
        ModelConfig(**{"vocab_size": 97, "hidden_size": 32, "num_attention_heads": 4, **kw})
    assert "\n" not in str(e.value)


def test_unsupported_checkpoint_architecture(tmp_path):
    from llmlab.checkpoint import write_json
    tmp_path.joinpath("m").mkdir()
    write_json(tmp_path / "m" / "config.json", {"model_type": "mamba"})
    with pytest.raises(UserError, match="unsupported model_type 'mamba'"):
        load_hf_dir(tmp_path / "m")


def test_strict_loading_names_and_shapes(tmp_path, tiny_config):
    from llmlab.checkpoint import load_tensors, save_tensors
    m = _model(tiny_config, {"mlp": "gelu", "position": "learned", "norm": "layernorm", "attention_bias": True,
                             "mlp_bias": True, "num_key_value_heads": 4})
    save_hf_dir(m, tmp_path / "m")  # a GPT-2 dir
    f = tmp_path / "m" / "model.safetensors"
    state = load_tensors(f)
    assert "transformer.h.0.attn.c_attn.weight" in state
    state["transformer.h.0.attn.c_attn.weight"] = state["transformer.h.0.attn.c_attn.weight"][:, :-1]
    save_tensors(f, state)
    with pytest.raises(UserError, match="q_proj|v_proj|shape"):
        load_hf_dir(tmp_path / "m")


def test_presets_build_and_train_kwargs_make_valid_models():
    from llmlab.model.presets import PRESETS, preset_config, train_model_kwargs
    from llmlab.train.sizing import size_model
    real = {"gpt2": 124_439_808, "llama": 6_738_415_616, "mistral": 7_241_732_096, "mixtral": 46_702_792_704,
            "qwen2": 494_032_768, "gemma": 2_506_172_416, "bloom": 559_214_592, "phi": 2_779_683_840}
    for name in PRESETS:
        cfg = preset_config(name)
        if name in real:  # the published parameter counts
            assert num_params(cfg) == real[name], name
        s = size_model(2, 97, 32, **train_model_kwargs(name, 2, 128, 32))
        m = Transformer(s.model)
        assert m.num_params() == s.params
        ids = torch.randint(0, 97, (1, 8))
        m.loss(ids[:, :-1], ids[:, 1:]).backward()


def test_fused_engine_feature_list():
    assert _cfg().beyond_llama_gpt() == []
    assert _cfg(mlp="gelu", position="learned", norm="layernorm").beyond_llama_gpt() == []
    assert _cfg(position="alibi", embedding_layernorm=True).beyond_llama_gpt() == ["position", "embedding_layernorm"]
    assert _cfg(num_local_experts=2, sliding_window=4).beyond_llama_gpt() == ["sliding_window", "num_local_experts"]
