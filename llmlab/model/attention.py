"""Causal self-attention with MHA / GQA / MQA (Ainslie et al. 2023) through SDPA.

n_kv_heads == n_heads is multi-head, 1 is multi-query, anything between is grouped-query:
each group of n_heads / n_kv_heads query heads shares one key/value head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import ModelConfig
from llmlab.model.linear import linear
from llmlab.model.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d, b = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=b)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=b)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache=None, mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d); with last_only, keys/values for all T tokens (the cache needs
        them) but only the last token's query and output: (B, 1, d)."""
        B, T, _ = x.shape
        k = linear(self.k_proj, x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = linear(self.v_proj, x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if last_only and T > 1:
            x, q_rope = x[:, -1:], tuple(r[..., -1:, :] for r in rope) if rope is not None else None
            mask = mask[:, :, -1:] if mask is not None else None
        else:
            q_rope, last_only = rope, False
        Tq = x.shape[1]
        q = linear(self.q_proj, x).view(B, Tq, self.n_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *q_rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)
        gqa = self.n_kv != self.n_heads
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        elif last_only or T == 1 or past == 0:
            # one new token sees everything; a fresh prompt is plain causal
            y = F.scaled_dot_product_attention(q, k, v, is_causal=Tq > 1, enable_gqa=gqa)
        else:  # a chunk appended to a cache: causal with an offset
            i = torch.arange(T, device=x.device).unsqueeze(1) + past
            j = torch.arange(past + T, device=x.device).unsqueeze(0)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=j <= i, enable_gqa=gqa)
        return linear(self.o_proj, y.transpose(1, 2).reshape(B, Tq, self.n_heads * self.head_dim))
