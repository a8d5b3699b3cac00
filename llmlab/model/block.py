"""A pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x)) (Xiong et al. 2020)."""
from __future__ import annotations

import torch
from torch import nn

from llmlab.model.attention import Attention
from llmlab.model.config import ModelConfig
from llmlab.model.mlp import make_mlp
from llmlab.model.norm import make_norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = make_norm(cfg.norm, cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = make_norm(cfg.norm, cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = make_mlp(cfg.mlp, cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def forward(self, x: torch.Tensor, rope, cache=None, mask=None, last_only: bool = False) -> torch.Tensor:
        """last_only: return only the last position (B, 1, d); used on the final layer when only
        the next-token logits are wanted, which skips that layer's query/MLP work on T-1 tokens."""
        h = self.self_attn(self.input_layernorm(x), rope, cache, mask, last_only=last_only)
        x = (x[:, -1:] if last_only else x) + h
        return x + self.mlp(self.post_attention_layernorm(x))
