"""A Transformer block in each layout of the notes.

- pre-norm (GPT-2 onwards, Xiong et al. 2020): x + f(norm(x)) for f = attention, then MLP;
- post-norm (Vaswani 2017, BERT): norm(x + f(x)); DeepNorm (Wang et al. 2022): norm(alpha x + f(x))
  with alpha = (2N)^(1/4) for an N-layer decoder (its init beta lives in transformer.py);
- sandwich (CogView, Ding et al. 2021; Gemma 2): x + norm_out(f(norm_in(x)));
- parallel (GPT-J, PaLM, Phi): x + attn(norm(x)) + mlp(norm(x)) with one shared norm.
The feed-forward is a dense MLP (llmlab/model/mlp.py) or a mixture of experts (moe.py).
Module names follow HF LLaMA (input_layernorm before attention, post_attention_layernorm before
the MLP); sandwich adds attn_out_layernorm and mlp_out_layernorm.
"""
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

        def norm():
            return make_norm(cfg.norm, cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_weight_offset)
        self.placement, self.parallel = cfg.norm_placement, cfg.parallel_block
        self.alpha = (2 * cfg.num_hidden_layers) ** 0.25 if cfg.deepnorm else 1.0
        self.input_layernorm = norm()
        if cfg.kv_lora_rank is not None:
            from llmlab.model.mla import MLAttention
            self.self_attn = MLAttention(cfg, layer_idx)
        else:
            self.self_attn = Attention(cfg, layer_idx)
        if not self.parallel:
            self.post_attention_layernorm = norm()
        if self.placement == "sandwich":
            self.attn_out_layernorm, self.mlp_out_layernorm = norm(), norm()
        if cfg.num_local_experts:
            from llmlab.model.moe import MoE
            self.mlp = MoE(cfg)
        else:
            self.mlp = make_mlp(cfg.mlp, cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.hidden_act)

    def forward(self, x: torch.Tensor, rope, cache=None, mask=None, last_only: bool = False) -> torch.Tensor:
        """last_only: return only the last position (B, 1, d); used on the final layer when only
        the next-token logits are wanted, which skips that layer's query/MLP work on T-1 tokens."""
        if self.placement == "pre" and not self.parallel:
            h = self.self_attn(self.input_layernorm(x), rope, cache, mask, last_only=last_only)
            x = (x[:, -1:] if last_only else x) + h
            return x + self.mlp(self.post_attention_layernorm(x))
        return self._variant(x, rope, cache, mask, last_only)

    def _variant(self, x, rope, cache, mask, last_only):
        if self.parallel:
            n = self.input_layernorm(x)
            h = self.self_attn(n, rope, cache, mask, last_only=last_only)
            if last_only:
                x, n = x[:, -1:], n[:, -1:]
            return x + h + self.mlp(n)
        if self.placement == "sandwich":
            h = self.attn_out_layernorm(self.self_attn(self.input_layernorm(x), rope, cache, mask, last_only=last_only))
            x = (x[:, -1:] if last_only else x) + h
            return x + self.mlp_out_layernorm(self.mlp(self.post_attention_layernorm(x)))
        # post-norm (DeepNorm when alpha != 1)
        h = self.self_attn(x, rope, cache, mask, last_only=last_only)
        x = self.input_layernorm(self.alpha * (x[:, -1:] if last_only else x) + h)
        return self.post_attention_layernorm(self.alpha * x + self.mlp(x))
