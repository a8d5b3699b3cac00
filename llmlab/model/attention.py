"""Causal self-attention with MHA / GQA / MQA (Ainslie et al. 2023).

n_kv_heads == n_heads is multi-head, 1 is multi-query, anything between is grouped-query:
each group of n_heads / n_kv_heads query heads shares one key/value head.
Scores go through `scaled_dot_product_attention` unless a variant needs them explicitly:
attention logit soft-capping (Gemma 2: s <- c tanh(s / c)) runs the eager path; `attn_implementation
= flash` runs llmlab.model.flash (plain causal only). Masks (window, sparse, padding) and position
biases (ALiBi, T5) arrive ready-made from the Transformer as `mask`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import ModelConfig
from llmlab.model.linear import linear
from llmlab.model.norm import make_norm
from llmlab.model.rope import apply_rope


def eager_attention(q, k, v, mask, scale: float, softcap: float | None, causal: bool) -> torch.Tensor:
    """softmax(cap(q k^T * scale) + mask) v with the score matrix explicit; mask: bool keep or float bias."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)).float() * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
    elif causal:
        T, S = q.shape[2], k.shape[2]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1), -math.inf)
    return torch.softmax(s, dim=-1).to(q.dtype) @ v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d, b = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=b)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=cfg.attention_out_bias)
        if cfg.qk_norm:
            self.q_norm = make_norm(cfg.norm, self.head_dim, cfg.rms_norm_eps, cfg.norm_weight_offset)
            self.k_norm = make_norm(cfg.norm, self.head_dim, cfg.rms_norm_eps, cfg.norm_weight_offset)
        self.qk_norm = cfg.qk_norm
        # the plain SDPA path unless a variant needs the scores (soft-capping) or asks for flash
        self.impl = "eager" if cfg.needs_scores else cfg.attn_implementation
        self.softcap, self.scale = cfg.attn_logit_softcapping, 1.0 / math.sqrt(self.head_dim)
        # context parallel (llmlab.distributed.context_parallel sets it): f(q, k, v) -> causal attention
        # of this rank's sequence chunk over the whole sequence, K/V of the other chunks on other ranks
        self.context_parallel = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache=None, mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d); with last_only, keys/values for all T tokens (the cache needs
        them) but only the last token's query and output: (B, 1, d). mask: None (causal), a bool
        keep-mask or a float bias (B|1, 1|H, T, S) with -inf where hidden."""
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
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *q_rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)
        if self.context_parallel is not None and cache is None:
            y = self.context_parallel(q, k, v)
        elif self.impl != "sdpa":
            y = self._explicit(q, k, v, mask, causal=not last_only and Tq > 1)
        else:
            y = self._sdpa(q, k, v, mask, Tq, T, past, last_only)
        return linear(self.o_proj, y.transpose(1, 2).reshape(B, Tq, self.n_heads * self.head_dim))

    def _sdpa(self, q, k, v, mask, Tq, T, past, last_only):
        gqa = self.n_kv != self.n_heads
        if mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        if last_only or T == 1 or past == 0:
            # one new token sees everything; a fresh prompt is plain causal
            return F.scaled_dot_product_attention(q, k, v, is_causal=Tq > 1, enable_gqa=gqa)
        i = torch.arange(T, device=q.device).unsqueeze(1) + past  # a chunk appended to a cache
        j = torch.arange(past + T, device=q.device).unsqueeze(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=j <= i, enable_gqa=gqa)

    def _explicit(self, q, k, v, mask, causal: bool):
        if self.impl == "flash" and mask is None:
            from llmlab.model.flash import flash_attention
            return flash_attention(q, k, v, causal=causal, scale=self.scale)
        return eager_attention(q, k, v, mask, self.scale, self.softcap, causal)
