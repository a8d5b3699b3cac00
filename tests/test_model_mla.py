"""Multi-head latent attention (llmlab/model/mla.py): logits equal HF DeepseekV3 on the same random
weights, the latent cache decodes exactly like a full forward, and stores what the paper says."""
from __future__ import annotations

import pytest
import torch

from llmlab.model.config import ModelConfig
from llmlab.model.kv_cache import KVCache
from llmlab.model.kv_cache import MLACache
from llmlab.model.mla import cache_numbers_per_token
from llmlab.model.transformer import Transformer, num_params

MLA = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6,
           rms_norm_eps=1e-6, tie_word_embeddings=False)


def _ours(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**MLA, **kw})).eval()


@pytest.mark.parametrize("q_lora_rank", [None, 12])
def test_logits_match_deepseek_v3(q_lora_rank):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.DeepseekV3Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, kv_lora_rank=8, q_lora_rank=q_lora_rank,
        qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6, first_k_dense_replace=2, rope_interleave=False,
        tie_word_embeddings=False, rms_norm_eps=1e-6)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = _ours(q_lora_rank=q_lora_rank)
    ours.load_state_dict(hf.state_dict(), strict=True)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert (ref - got).abs().max() < 1e-4
    assert ours.num_params() == num_params(ours.config)


def test_latent_cache_decodes_like_full_forward():
    m = _ours(q_lora_rank=12)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = m(ids)
        cache = KVCache.for_model(m, 2, 16)
        assert isinstance(cache, MLACache)
        steps = [m(ids[:, :4], cache=cache), m(ids[:, 4:7], cache=cache)]  # a prompt, then a 3-token chunk
        steps += [m(ids[:, t:t + 1], cache=cache) for t in range(7, 10)]
        last = m(ids, last_only=True)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
    assert (last[:, 0] - full[:, -1]).abs().max() < 1e-5


def test_cache_bytes_per_token_vs_mha_gqa():
    """DeepSeek-V2 Table 1: MLA caches (d_c + d_h^R) numbers per token and layer vs 2 n_h d_h for MHA."""
    mla = ModelConfig(**MLA)
    mha = ModelConfig(**{**{k: v for k, v in MLA.items() if "lora" not in k and "_head_dim" not in k}})
    gqa = ModelConfig(**{**{k: v for k, v in MLA.items() if "lora" not in k and "_head_dim" not in k},
                         "num_key_value_heads": 1})
    assert cache_numbers_per_token(mla) == 8 + 4
    assert cache_numbers_per_token(mha) == 2 * 4 * 8 and cache_numbers_per_token(gqa) == 2 * 8
    # the allocated caches agree with the formula (fp32: 4 bytes a number)
    for cfg in (mla, mha):
        torch.manual_seed(0)
        cache = KVCache.for_model(Transformer(cfg), 1, 16)
        nbytes = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
        assert nbytes == 4 * 16 * cfg.num_hidden_layers * cache_numbers_per_token(cfg)
    # DeepSeek-V2's own shape (d_c = 4 d_h, d_h^R = d_h / 2, 128 heads of 128): 576 vs 32768 numbers
    ds = ModelConfig(hidden_size=5120, num_attention_heads=128, kv_lora_rank=512, qk_rope_head_dim=64,
                     qk_nope_head_dim=128, v_head_dim=128, num_hidden_layers=1)
    assert cache_numbers_per_token(ds) == 576
    assert cache_numbers_per_token(ModelConfig(hidden_size=16384, num_attention_heads=128,
                                               num_hidden_layers=1)) == 32768


def test_mla_refuses_gqa_and_trains():
    from llmlab.errors import UserError
    with pytest.raises(UserError):
        ModelConfig(**MLA, num_key_value_heads=2)
    with pytest.raises(UserError, match="qk_norm"):
        ModelConfig(**MLA, qk_norm=True)
    biased = _ours(attention_bias=True, q_lora_rank=12)
    assert biased.num_params() == num_params(biased.config)
    m = _ours().train()
    ids = torch.randint(0, 97, (2, 8))
    m.loss(ids, ids).backward()
    assert all(p.grad is not None for p in m.parameters())


def test_mla_round_trips_as_hf_dir(tmp_path):
    from llmlab.model.hf import load_hf_dir, save_hf_dir
    m = _ours(q_lora_rank=12)
    save_hf_dir(m, tmp_path)
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        assert (load_hf_dir(tmp_path)(ids) - m(ids)).abs().max() < 1e-6


def test_mla_greedy_generation_uses_the_latent_cache():
    from llmlab.infer.generate import generate_ids
    from llmlab.infer.sampling import SamplingParams
    m = _ours()
    prompt = [3, 14, 15, 9, 2]
    got = list(generate_ids(m, prompt, SamplingParams(temperature=0.0, max_new_tokens=6)))
    ids = list(prompt)
    with torch.no_grad():  # no cache: the full forward every step
        for _ in range(6):
            ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    assert got == ids[len(prompt):]
