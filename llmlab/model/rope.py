"""Rotary position embedding (Su et al. 2021, RoFormer), in the "rotate half" layout HF LLaMA uses.

Pair i of a head vector is (x[i], x[i + d/2]); it is rotated by angle pos * theta^(-2i/d).
"""
from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        t = torch.arange(max_positions, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        # buffers are not saved: they are a function of the config. `sin` carries rotate_half's
        # sign (-sin on the first half) so applying RoPE is cat + mul + addcmul, no negation.
        sign = torch.cat([-torch.ones(head_dim // 2), torch.ones(head_dim // 2)]).double()
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", (emb.sin() * sign).float(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) or (T,) -> cos, sin broadcastable to (B, H, T, D)."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x*cos + rotate_half(x)*sin with rotate_half(x) = (-x2, x1); the minus lives in `sin`."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)
