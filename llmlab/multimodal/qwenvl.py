"""Qwen-VL's vision-language adapter (Bai et al. 2023, "Qwen-VL", s2.1): one cross-attention layer
whose queries are `num_queries` learned vectors (256 in the paper) and whose keys/values are the
ViT's patch features, so every image becomes a fixed number of LM tokens however many patches it
has. Because attention pools away the grid, 2-D absolute sin-cos positions are added to the
queries' partners: the patch features' keys get their (row, column) position, and each query gets
the position of a point on a matching sqrt(Q) x sqrt(Q) grid, so query q tends to read the
region it is placed on. Then LN and a linear map to the LM width. (Qwen2-VL replaces it with a
2x2 patch merger: dynres.py.)

    out = W_o LN( CrossAttn(q = Q + P_q, k = LN(V) W_kv + P_k, v = LN(V) W_kv) )
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from llmlab.errors import UserError
from llmlab.multimodal.vit import sincos_2d


def grid_positions(n: int, dim: int) -> torch.Tensor:
    """(n, dim) 2-D sin-cos positions for n = g*g cells (MAE layout, no class token)."""
    g = math.isqrt(n)
    if g * g != n:
        raise UserError(f"2-D positions need a square number of tokens, got {n}")
    return sincos_2d(g, dim, cls_token=False)[0]


class QwenVLAdapter(nn.Module):
    def __init__(self, vision_dim: int, lm_dim: int, num_queries: int = 16, dim: int = 64, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.kv_proj = nn.Linear(vision_dim, dim, bias=False)
        self.ln_q, self.ln_kv, self.ln_post = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.proj = nn.Linear(dim, lm_dim)
        self.register_buffer("query_pos", grid_positions(num_queries, dim), persistent=False)

    def forward(self, patch_feats: torch.Tensor) -> torch.Tensor:
        """(B, N patches in row-major grid order, vision_dim) -> (B, num_queries, lm_dim)."""
        b, n, _ = patch_feats.shape
        kv = self.ln_kv(self.kv_proj(patch_feats))
        pos_k = grid_positions(n, kv.shape[-1]).to(kv.dtype)
        q = (self.ln_q(self.queries) + self.query_pos).expand(b, -1, -1)
        out, _ = self.attn(q, kv + pos_k, kv, need_weights=False)
        return self.proj(self.ln_post(out))
