"""M-RoPE, Qwen2-VL's multimodal rotary positions (Wang et al. 2024, "Qwen2-VL").

Each token has three position components (temporal, height, width). Text tokens use the same
running index for all three (so M-RoPE reduces to 1-D RoPE on text); the patches of an image share
the temporal index of the image's start and take start + row / start + column as height / width;
text after an image continues from max(previous positions) + 1. The rotary frequencies (RoPE's
theta^(-2i/d), d/2 of them) are split into sections, e.g. (16, 24, 24) for head_dim 128: the first
section rotates by the temporal position, the next by the height, the last by the width.
`mrope_cos_sin` equals transformers' `Qwen2VLRotaryEmbedding` (tests/test_multimodal_mrope.py).
"""
from __future__ import annotations

import torch

from llmlab.errors import UserError


def mrope_position_ids(segments: list[tuple[str, int] | tuple[str, int, int]]) -> torch.Tensor:
    """(3, T) positions for a sequence of segments: ("text", n) or ("image", grid_h, grid_w)."""
    cols, nxt = [], 0
    for seg in segments:
        if seg[0] == "text":
            p = torch.arange(nxt, nxt + seg[1])
            cols.append(torch.stack([p, p, p]))
            nxt += seg[1]
        elif seg[0] == "image":
            gh, gw = seg[1], seg[2]
            h = torch.arange(gh).repeat_interleave(gw)
            w = torch.arange(gw).repeat(gh)
            cols.append(torch.stack([torch.zeros_like(h), h, w]) + nxt)
            nxt += max(gh, gw)  # = max(position) + 1 over the image's three components
        else:
            raise UserError(f"segment kind must be text or image, got {seg[0]!r}")
    return torch.cat(cols, dim=1)


def mrope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float = 10000.0,
                  sections: tuple[int, int, int] = (16, 24, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (3, B, T) -> cos, sin (B, T, head_dim) for `apply_rotary`."""
    if sum(sections) != head_dim // 2:
        raise UserError(f"mrope sections {list(sections)} must sum to head_dim/2 = {head_dim // 2}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
    freqs = position_ids[..., None].float() * inv_freq  # (3, B, T, d/2)
    freqs = torch.cat([chunk[i % 3] for i, chunk in enumerate(freqs.split(list(sections), dim=-1))], dim=-1)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, d): x cos + rotate_half(x) sin (the half-split RoPE convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.unsqueeze(1) + torch.cat([-x2, x1], dim=-1) * sin.unsqueeze(1)
