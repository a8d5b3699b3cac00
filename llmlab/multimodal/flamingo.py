"""Flamingo's bridges (Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning").

Perceiver resampler: a fixed number of learned latent queries cross-attend to the vision features
(keys/values are the features *and* the latents, as in the paper), then a feed-forward layer;
any number of patches becomes `num_latents` visual tokens.

Gated cross-attention dense block, inserted before LM layers, the LM itself frozen:
    x = x + tanh(a_attn) * XAttn(LN(x), visual tokens)
    x = x + tanh(a_ff)   * FFW(LN(x))
with a_attn = a_ff = 0 at init, so the model's logits equal the frozen LM's before training
(tests/test_multimodal_flamingo.py checks this exactly). Here each sequence has one image that all
its text tokens may attend to (the paper's per-image masking reduces to this for one image).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.multimodal.llava import check_rope_lm


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


class CrossAttention(nn.Module):
    """Queries from x, keys/values from `ctx`; multi-head, no mask."""

    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(ctx_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h = self.heads
        q = self.to_q(x).view(B, T, h, D // h).transpose(1, 2)
        k, v = self.to_kv(ctx).view(B, ctx.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int = 2, num_latents: int = 8, heads: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * dim ** -0.5)
        self.layers = nn.ModuleList(nn.ModuleDict({"norm_media": nn.LayerNorm(dim), "norm_latents": nn.LayerNorm(dim),
                                                   "attn": CrossAttention(dim, dim, heads), "ff": FeedForward(dim)})
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) vision features -> (B, num_latents, dim)."""
        lat = self.latents.expand(feats.shape[0], -1, -1)
        for layer in self.layers:
            media, q = layer["norm_media"](feats), layer["norm_latents"](lat)
            lat = lat + layer["attn"](q, torch.cat([media, q], dim=1))
            lat = lat + layer["ff"](lat)
        return self.norm(lat)


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, media_dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, media_dim, heads)
        self.attn_gate = nn.Parameter(torch.zeros(()))
        self.ff = FeedForward(dim)
        self.ff_gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_gate.tanh() * self.attn(self.norm(x), media)
        return x + self.ff_gate.tanh() * self.ff(x)


class Flamingo(nn.Module):
    """Frozen vision encoder -> resampler -> gated cross-attention before every `every`-th layer of a
    frozen LM. Only the resampler, the projection and the gated blocks train."""

    def __init__(self, vision, lm, num_latents: int = 8, every: int = 1, heads: int = 4):
        super().__init__()
        check_rope_lm(lm)
        self.vision, self.lm, self.every = vision, lm, every
        for p in list(vision.parameters()) + list(lm.parameters()):
            p.requires_grad_(False)
        d = lm.config.hidden_size
        self.media_proj = nn.Linear(vision.config.embed_dim, d)
        self.resampler = PerceiverResampler(d, num_latents=num_latents, heads=heads)
        n = (lm.config.num_hidden_layers + every - 1) // every
        self.xattn = nn.ModuleList(GatedCrossAttentionBlock(d, d, heads) for _ in range(n))

    def media(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.vision.forward_features(images)[:, 1:]
        return self.resampler(self.media_proj(feats))

    def forward(self, ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and (B, C, H, W) images -> (B, T, vocab) logits."""
        media = self.media(images)
        lm = self.lm
        x = lm.model.embed_tokens(ids)
        rope = lm.rope(torch.arange(ids.shape[1]), x.dtype)
        for i, layer in enumerate(lm.model.layers):
            if i % self.every == 0:
                x = self.xattn[i // self.every](x, media)
            x = layer(x, rope, None, None)
        return lm.lm_head(lm.model.norm(x))

