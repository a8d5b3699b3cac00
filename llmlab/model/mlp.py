"""Feed-forward blocks and their activations.

Plain MLP (GPT-2, BERT, BLOOM, Phi): down(act(up(x))) with act ReLU (Vaswani 2017), GeLU exact or its
tanh approximation (Hendrycks & Gimpel 2016), or Swish/SiLU (Ramachandran 2017).
GLU family (Shazeer 2020, "GLU Variants Improve Transformer"): down(act(gate(x)) * up(x)) with
act = SiLU (SwiGLU: LLaMA, Mistral, Qwen), GeLU (GeGLU: Gemma, with the tanh form), ReLU (ReGLU).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import GATED_MLPS, PLAIN_MLPS
from llmlab.model.linear import linear

# HF `hidden_act` names (gelu_new / gelu_pytorch_tanh are the same tanh approximation)
ACTIVATIONS = {
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
}


class PlainMLP(nn.Module):
    """down(act(up(x))), the GPT-2/BERT feed-forward; the gated subclass adds gate_proj (registered
    first, so parameter order and seeded init are those of a gate, up, down module)."""
    gated = False

    def __init__(self, dim: int, hidden: int, bias: bool = True, act: str = "gelu_pytorch_tanh"):
        super().__init__()
        self.act_name, self.act = act, ACTIVATIONS[act]
        if self.gated:
            self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.down_proj, self.act(linear(self.up_proj, x)))


class GatedMLP(PlainMLP):
    """down(act(gate(x)) * up(x)): SwiGLU / GeGLU / ReGLU."""
    gated = True

    def __init__(self, dim: int, hidden: int, bias: bool = False, act: str = "silu"):
        super().__init__(dim, hidden, bias, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.act_name != "silu":
            return linear(self.down_proj, self.act(linear(self.gate_proj, x)) * linear(self.up_proj, x))
        # inference: reuse the gate buffer (saves two (T, hidden) allocations per layer)
        return self.down_proj(F.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))


SwiGLU = GatedMLP


def make_mlp(kind: str, dim: int, hidden: int, bias: bool, act: str | None = None) -> nn.Module:
    if kind in GATED_MLPS:
        return GatedMLP(dim, hidden, bias, act or GATED_MLPS[kind])
    if kind in PLAIN_MLPS:
        return PlainMLP(dim, hidden, bias, act or PLAIN_MLPS[kind])
    raise ValueError(f"unknown mlp '{kind}'")
