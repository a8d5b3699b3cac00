"""Multi-head latent attention (MLA; DeepSeek-V2, arXiv:2405.04434 §2.1), selected by `kv_lora_rank`.

Keys and values come from one low-rank latent per token instead of per-head K/V:
  c_KV = RMSNorm(W_DKV x)                      (kv_lora_rank numbers per token, shared by all heads)
  [k_C ; v] = W_UKV c_KV                       (per head: qk_nope_head_dim key + v_head_dim value)
  k_R = RoPE(W_KR x)                           (one decoupled RoPE key of qk_rope_head_dim, shared)
  q = W_Q x (or W_UQ RMSNorm(W_DQ x) with q_lora_rank), split into q_C and q_R = RoPE(q_R)
  score_h = (q_C,h . k_C,h + q_R,h . k_R) / sqrt(qk_nope_head_dim + qk_rope_head_dim)
RoPE cannot be applied inside the low-rank path (it would stop W_UK being absorbable into W_Q), so
position lives in the separate k_R. The cache keeps only c_KV and k_R: (kv_lora_rank +
qk_rope_head_dim) numbers per token and layer, against 2 * n_kv_heads * head_dim for MHA/GQA
(`cache_numbers_per_token`). Here K and V are re-expanded from the cached latents at every step
(the "naive" form; absorbing W_UK into W_Q saves that work and gives the same result).
Weight names as HF DeepseekV3 (q_proj | q_a_proj, q_a_layernorm, q_b_proj; kv_a_proj_with_mqa,
kv_a_layernorm, kv_b_proj, o_proj), RoPE in the half-split layout (HF rope_interleave=False).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.linear import linear
from llmlab.model.norm import RMSNorm
from llmlab.model.rope import apply_rope


def cache_numbers_per_token(cfg) -> int:
    """Numbers the KV cache stores per token per layer (x bytes per number for bytes)."""
    if cfg.kv_lora_rank:
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.num_key_value_heads * cfg.head_dim


class MLAttention(nn.Module):
    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        H, d, b = cfg.num_attention_heads, cfg.hidden_size, cfg.attention_bias
        self.n_heads, self.rank, self.q_rank = H, cfg.kv_lora_rank, cfg.q_lora_rank
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        qk = self.nope + self.rope_dim
        if self.q_rank:
            self.q_a_proj = nn.Linear(d, self.q_rank, bias=b)
            self.q_a_layernorm = RMSNorm(self.q_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(self.q_rank, H * qk, bias=False)
        else:
            self.q_proj = nn.Linear(d, H * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.rank + self.rope_dim, bias=b)
        self.kv_a_layernorm = RMSNorm(self.rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.rank, H * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(H * self.v_dim, d, bias=cfg.attention_out_bias)
        self.scale = 1.0 / math.sqrt(qk)

    def forward(self, x: torch.Tensor, rope, cache=None, mask: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Same contract as llmlab.model.attention.Attention.forward (mask: None = causal)."""
        B, T, _ = x.shape
        c_kv, k_rot = linear(self.kv_a_proj_with_mqa, x).split([self.rank, self.rope_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv).unsqueeze(1)  # (B, 1, T, rank)
        k_rot = apply_rope(k_rot.unsqueeze(1), *rope)  # (B, 1, T, rope_dim)
        q_rope = rope
        if last_only and T > 1:
            x, q_rope = x[:, -1:], tuple(r[..., -1:, :] for r in rope)
            mask = mask[:, :, -1:] if mask is not None else None
        Tq = x.shape[1]
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_rank else linear(self.q_proj, x)
        q = q.view(B, Tq, self.n_heads, self.nope + self.rope_dim).transpose(1, 2)
        q = torch.cat((q[..., :self.nope], apply_rope(q[..., self.nope:], *q_rope)), dim=-1)
        past = 0
        if cache is not None:  # only the latents are cached
            past = cache.length
            c_kv, k_rot = cache.update(self.layer_idx, c_kv, k_rot)
        S = c_kv.shape[2]
        kv = self.kv_b_proj(c_kv.squeeze(1)).view(B, S, self.n_heads, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat((k_nope, k_rot.expand(-1, self.n_heads, -1, -1)), dim=-1)
        if mask is None and Tq > 1 and past > 0:  # a chunk appended to a cache: causal by absolute position
            mask = (torch.arange(S, device=x.device)[None] <= torch.arange(past, past + Tq, device=x.device)[:, None])
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=Tq > 1 and Tq == S, scale=self.scale)
        return linear(self.o_proj, y.transpose(1, 2).reshape(B, Tq, self.n_heads * self.v_dim))
