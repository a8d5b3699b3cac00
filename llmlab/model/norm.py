"""Normalisation layers: RMSNorm (Zhang & Sennrich 2019), LayerNorm (Ba et al. 2016), and Gemma's
RMSNorm whose stored gain is g - 1 (y = x_hat * (1 + g)).

Where the norms sit (pre / post / sandwich, DeepNorm) is the block's business: llmlab/model/block.py.
"""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g. Computed in fp32, as LLaMA does, then cast back."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return torch.nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class OffsetRMSNorm(nn.Module):
    """Gemma: y = x_hat * (offset + g), all in fp32, g initialised to 0 (so the gain starts at 1)."""

    def __init__(self, dim: int, eps: float, offset: float):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), None, self.eps)
        return (h * (self.offset + self.weight.float())).to(x.dtype)


def make_norm(kind: str, dim: int, eps: float, offset: float = 0.0) -> nn.Module:
    if kind == "rmsnorm":
        return OffsetRMSNorm(dim, eps, offset) if offset else RMSNorm(dim, eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm '{kind}'")
