"""LM-Infinite's Lambda-shaped mask and LongLoRA's S2-Attn (llmlab/model/masks.py), by hand and
against the paper's roll-and-group reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.model.config import ModelConfig
from llmlab.model.masks import keep_mask, s2_heads
from llmlab.model.transformer import Transformer

BASE = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def test_lambda_mask_by_hand():
    cfg = ModelConfig(**BASE, sliding_window=3, global_tokens=2)
    m = keep_mask(cfg, 8, 0, None, "cpu")[0, 0].int()
    want = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1, 0, 0, 0],
                         [1, 1, 0, 1, 1, 1, 0, 0],
                         [1, 1, 0, 0, 1, 1, 1, 0],
                         [1, 1, 0, 0, 0, 1, 1, 1]])
    assert torch.equal(m, want)
    # decoding with a cache sees the same rows
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 50, (1, 12))
    from llmlab.model.kv_cache import KVCache
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, 1, 12)
        parts = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


def _s2_reference(q, k, v, G):
    """LongLoRA Algorithm 1 (causal within groups): roll the second half of the heads by -G/2,
    attend within groups of G, roll back."""
    B, H, T, D = q.shape
    h2 = H // 2

    def shift(x, s):
        return torch.cat([x[:, :H - h2], x[:, H - h2:].roll(s, dims=2)], dim=1)
    q, k, v = (shift(t, -G // 2) for t in (q, k, v))
    grp = [t.reshape(B, H, T // G, G, D) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*grp, is_causal=True).reshape(B, H, T, D)
    return shift(out, G // 2)


def test_s2_attn_matches_longlora_except_its_wraparound_leak():
    B, H, T, D, G = 2, 4, 16, 8, 4
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    ours = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) & s2_heads(i, j, G, H))
    ref = _s2_reference(q, k, v, G)
    assert (ours[:, :2] - ref[:, :2]).abs().max() < 1e-5  # plain-group heads: identical
    assert (ours[:, 2:, G // 2:] - ref[:, 2:, G // 2:]).abs().max() < 1e-5  # shifted heads past the wrap
    # the roll lets shifted-head query 0 see the last tokens (the future); the mask form does not
    v2 = v.clone()
    v2[:, :, -1] += 1.0
    assert (_s2_reference(q, k, v2, G)[:, 2:, 0] - ref[:, 2:, 0]).abs().max() > 1e-3
    assert torch.equal(F.scaled_dot_product_attention(q, k, v2, attn_mask=(j <= i) & s2_heads(i, j, G, H))[:, :, 0],
                       ours[:, :, 0])


def test_s2_only_in_training():
    torch.manual_seed(0)
    plain = Transformer(ModelConfig(**BASE))
    s2 = Transformer(ModelConfig(**BASE, s2_group_size=4))
    s2.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 50, (1, 16))
    with torch.no_grad():
        assert torch.equal(s2.eval()(ids), plain.eval()(ids))  # inference: full attention
        assert (s2.train()(ids) - plain.train()(ids)).abs().max() > 1e-4  # training: grouped
        assert (s2(ids)[:, :2] - plain(ids)[:, :2]).abs().max() < 1e-5  # the first (shifted) half-group sees all
