"""The model core on tiny random configs: every variant runs, caches agree, counts add up, loads are strict."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from llmlab.errors import UserError
from llmlab.model import KVCache, ModelConfig, Transformer, flops_per_token, num_params
from llmlab.model.hf import load_hf_dir, save_hf_dir

VARIANTS = {
    "llama-gqa": {},
    "mha": {"num_key_value_heads": 4},
    "mqa": {"num_key_value_heads": 1},
    "gpt-style": {"norm": "layernorm", "mlp": "gelu", "position": "learned", "attention_bias": True,
                  "mlp_bias": True, "tie_word_embeddings": False},
    "untied-rope-base": {"tie_word_embeddings": False, "rope_theta": 500.0},
}


@pytest.fixture(params=list(VARIANTS))
def variant(request, tiny_config):
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(tiny_config, **VARIANTS[request.param])).eval()


def test_forward_shapes_and_param_count(variant):
    ids = torch.randint(0, 97, (2, 10))
    assert variant(ids).shape == (2, 10, 97)
    assert variant(ids, last_only=True).shape == (2, 1, 97)
    assert variant.num_params() == num_params(variant.config)
    assert variant.num_params(non_embedding=True) == num_params(variant.config, non_embedding=True)


def test_cache_matches_full(variant):
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = variant(ids)
        cache = KVCache.for_model(variant, 2, 12)
        parts = [variant(ids[:, :7], cache=cache)] + [variant(ids[:, t:t + 1], cache=cache) for t in range(7, 12)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_left_padding_mask_matches_unpadded(variant):
    """A left-padded row scores exactly like the same row alone."""
    a = torch.randint(0, 97, (1, 9))
    b = torch.randint(0, 97, (1, 5))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    with torch.no_grad():
        out = variant(batch, attention_mask=mask)
        assert torch.allclose(out[0], variant(a)[0], atol=1e-5)
        assert torch.allclose(out[1, 4:], variant(b)[0], atol=1e-5)


def test_causality(variant):
    ids = torch.randint(0, 97, (1, 10))
    ids2 = ids.clone()
    ids2[0, 6:] = (ids2[0, 6:] + 1) % 97
    with torch.no_grad():
        assert torch.allclose(variant(ids)[0, :6], variant(ids2)[0, :6], atol=1e-6)


def test_save_load_roundtrip(variant, tmp_path):
    save_hf_dir(variant, tmp_path / "m")
    back = load_hf_dir(tmp_path / "m")
    ids = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        assert torch.equal(variant(ids), back(ids))


def test_gqa_equals_mha_with_repeated_kv(tiny_config):
    """GQA is MHA whose key/value heads are shared: repeat them and the outputs agree."""
    torch.manual_seed(0)
    gqa = Transformer(tiny_config).eval()
    mha = Transformer(dataclasses.replace(tiny_config, num_key_value_heads=4)).eval()
    sd = gqa.state_dict()
    rep = tiny_config.num_attention_heads // tiny_config.num_key_value_heads
    for k in list(sd):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            sd[k] = sd[k].view(tiny_config.num_key_value_heads, tiny_config.head_dim, -1) \
                .repeat_interleave(rep, 0).reshape(-1, tiny_config.hidden_size)
    mha.load_state_dict(sd)
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert torch.allclose(gqa(ids), mha(ids), atol=1e-5)


def test_flops_per_token_formula(tiny_config):
    cfg = tiny_config
    n = num_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.hidden_size
    attn = cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * 64
    assert flops_per_token(cfg, 64) == 6 * n + 12 * attn
    assert flops_per_token(cfg, 64, training=False) == 2 * n + 4 * attn


def test_context_window_enforced(tiny_config):
    m = Transformer(tiny_config)
    with pytest.raises(ValueError, match="context window"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_gradient_checkpointing_same_grads(tiny_config):
    torch.manual_seed(0)
    m = Transformer(tiny_config)
    ids = torch.randint(0, 97, (2, 16))
    m.loss(ids[:, :-1], ids[:, 1:]).backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.gradient_checkpointing = True
    m.loss(ids[:, :-1], ids[:, 1:]).backward()
    for a, p in zip(g1, m.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_strict_loading_names_the_tensor(tiny_config, tmp_path):
    from safetensors.torch import load_file, save_file

    m = Transformer(tiny_config)
    save_hf_dir(m, tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    good = load_file(f)

    bad = dict(good)
    bad.pop("model.layers.1.mlp.up_proj.weight")
    save_file(bad, f)
    with pytest.raises(UserError, match="missing tensors: model.layers.1.mlp.up_proj.weight"):
        load_hf_dir(tmp_path / "m")

    bad = dict(good, **{"model.layers.0.extra.weight": torch.zeros(2)})
    save_file(bad, f)
    with pytest.raises(UserError, match="unexpected tensors: model.layers.0.extra.weight"):
        load_hf_dir(tmp_path / "m")

    bad = dict(good)
    bad["model.norm.weight"] = torch.ones(31)
    save_file(bad, f)
    with pytest.raises(UserError, match=r"mis-shaped tensors: model.norm.weight \(expected \(32,\), got \(31,\)\)"):
        load_hf_dir(tmp_path / "m")

    f.write_bytes(f.read_bytes()[:100])  # truncated file
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_hf_dir(tmp_path / "m")


def test_bad_config_values():
    with pytest.raises(ValueError, match="not a multiple"):
        ModelConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(hidden_size=30, num_attention_heads=4)
