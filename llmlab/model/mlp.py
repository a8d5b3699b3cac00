"""Feed-forward blocks: SwiGLU (Shazeer 2020, used by LLaMA) and the GPT-style GELU MLP."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.linear import linear


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return linear(self.down_proj, F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x))
        # inference: reuse the gate buffer (saves two (T, hidden) allocations per layer)
        return self.down_proj(F.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))


class GeluMLP(nn.Module):
    """down(gelu(up(x))), the GPT-2/BERT feed-forward."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.down_proj, F.gelu(linear(self.up_proj, x), approximate="tanh"))


def make_mlp(kind: str, dim: int, hidden: int, bias: bool) -> nn.Module:
    if kind == "swiglu":
        return SwiGLU(dim, hidden, bias)
    if kind == "gelu":
        return GeluMLP(dim, hidden, bias)
    raise ValueError(f"unknown mlp '{kind}'")
