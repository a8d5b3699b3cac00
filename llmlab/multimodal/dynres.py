"""Qwen2-VL's naive dynamic resolution (Wang et al. 2024, "Qwen2-VL"): images keep (close to) their
own size and aspect ratio instead of being squashed to one square, so the number of visual tokens
varies per image.

1. `smart_resize`: round height and width to multiples of factor = patch * merge (28 for 14-px
   patches merged 2x2), then scale both by one factor so the pixel count lies in [min, max].
2. `patchify`: cut the (C, H, W) image into P x P patches, listed merge-block by merge-block
   (the 2 x 2 patches that will be merged are adjacent), each repeated over `temporal` frames
   (a still image is a 2-frame video for the Conv3d patch embedding); grid_thw = (1, H/P, W/P).
3. `DynamicViT`: patches of any number of images are *packed* into one sequence; attention is
   block-diagonal (a patch sees only its own image), positions are 2-D rotary (the first half of
   each head's rotary frequencies turn with the row, the second with the column; no learned
   absolute positions, so any grid works), and a `PatchMerger` (LN, concat 2x2 neighbours, MLP)
   gives one LM token per 2x2 patches. The LM side places them with M-RoPE (mrope.py).

Parameter names are transformers' `Qwen2VisionTransformerPretrainedModel`'s, so its state dict
loads strictly; `tests/test_multimodal_dynres.py` checks the merged tokens against it on random
weights, and `preprocess` against `Qwen2VLImageProcessorPil` (pixel values and grids).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, as Qwen2-VL
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """(h, w), both multiples of `factor`, aspect ratio kept as well as rounding allows, h * w in
    [min_pixels, max_pixels] (Qwen2-VL's image processor)."""
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise UserError(f"image {width}x{height}: the aspect ratio must be below 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(image: torch.Tensor, patch: int = 14, merge: int = 2, temporal: int = 2) -> tuple[torch.Tensor, tuple]:
    """(C, H, W) -> (H/P * W/P, C * temporal * P * P) rows in merge-block order, and (1, H/P, W/P)."""
    c, hgt, wid = image.shape
    if hgt % (patch * merge) or wid % (patch * merge):
        raise UserError(f"image {wid}x{hgt} is not a multiple of patch*merge={patch * merge}: smart_resize it first")
    gh, gw = hgt // patch, wid // patch
    x = image.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch).permute(1, 4, 2, 5, 0, 3, 6)
    x = x.unsqueeze(5).expand(*x.shape[:5], temporal, patch, patch)
    return x.reshape(gh * gw, c * temporal * patch * patch), (1, gh, gw)


def preprocess(images, patch: int = 14, merge: int = 2, temporal: int = 2, min_pixels: int = 56 * 56,
               max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL images -> packed pixel values (sum of patches, C*T*P*P) and grid_thw (n, 3): bicubic
    resize to `smart_resize`'s size, scale to [0, 1], normalise with CLIP's mean/std."""
    from PIL import Image
    rows, grids = [], []
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    for im in images:
        im = im.convert("RGB")
        h, w = smart_resize(im.height, im.width, patch * merge, min_pixels, max_pixels)
        if (h, w) != (im.height, im.width):
            im = im.resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        p, g = patchify((x - mean) / std, patch, merge, temporal)
        rows.append(p)
        grids.append(g)
    return torch.cat(rows), torch.tensor(grids)


def position_ids(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(total patches, 2) (row, column) of every patch, in `patchify`'s merge-block order."""
    out = []
    for t, h, w in grid_thw.tolist():
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        pos = torch.stack([hh.reshape(shape).transpose(1, 2).flatten(), ww.reshape(shape).transpose(1, 2).flatten()], -1)
        out.append(pos.repeat(t, 1))
    return torch.cat(out)


def rotary_2d(pos: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (N, head_dim): head_dim/4 frequencies theta^(-2i/(head_dim/2)) turned by the row, as
    many by the column; [row, col] repeated twice to match rotate-half."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float) / (head_dim // 2))
    ang = (pos[..., None].float() * inv).flatten(1)  # (N, 2 * head_dim/4): [rows | columns]
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


@dataclass
class DynamicViTConfig:
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    hidden_size: int = 576  # the LM's width: one merged token per merge x merge patches


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DynamicViTConfig):
        super().__init__()
        self.cfg = cfg
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel_size=k, stride=k, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return self.proj(x.view(-1, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size)).view(-1, c.embed_dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, cos, sin, mask):
        n = len(x)
        q, k, v = self.qkv(x).reshape(n, 3, self.heads, -1).permute(1, 2, 0, 3)  # each (heads, n, hd)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(0, 1).reshape(n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick GELU, as Qwen2-VL's vision tower


class Block(nn.Module):
    def __init__(self, cfg: DynamicViTConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6), nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """LN, then the merge x merge neighbouring patches (adjacent rows in patchify's order)
    concatenated and mapped by an MLP to the LM width."""

    def __init__(self, cfg: DynamicViTConfig):
        super().__init__()
        self.width = cfg.embed_dim * cfg.spatial_merge_size ** 2
        self.ln_q = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, cfg.hidden_size))

    def forward(self, x):
        return self.mlp(self.ln_q(x).view(-1, self.width))


class DynamicViT(nn.Module):
    def __init__(self, cfg: DynamicViTConfig):
        super().__init__()
        if cfg.embed_dim % cfg.num_heads or (cfg.embed_dim // cfg.num_heads) % 4:
            raise UserError(f"embed_dim {cfg.embed_dim} / num_heads {cfg.num_heads} must be a multiple of 4 "
                            "(2-D rotary: a quarter of each head per axis and half)")
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Packed patches of several images -> (total patches / merge^2, hidden_size) LM tokens."""
        cfg = self.config
        sizes = (grid_thw[:, 1] * grid_thw[:, 2]).repeat_interleave(grid_thw[:, 0])
        if int(sizes.sum()) != len(pixel_values):
            raise UserError(f"{len(pixel_values)} patches but grid_thw describes {int(sizes.sum())}")
        owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        mask = owner[:, None] == owner[None, :]  # block-diagonal: each image attends to itself
        cos, sin = rotary_2d(position_ids(grid_thw, cfg.spatial_merge_size), cfg.embed_dim // cfg.num_heads)
        x = self.patch_embed(pixel_values)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        return self.merger(x)

    @staticmethod
    def tokens_per_image(grid_thw: torch.Tensor, merge: int = 2) -> list[int]:
        return (grid_thw.prod(-1) // merge ** 2).tolist()
