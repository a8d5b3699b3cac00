"""Training and decoding FLOPs.

- Whole run: C = 6 N D (Kaplan et al. 2020, sec. 2.1): 2 FLOPs per weight per token forward
  (multiply + add), twice that backward (grad wrt activations and wrt weights).
- Per Transformer layer, forward, batch b, sequence s, hidden h (Narayanan et al. 2021,
  "Efficient Large-Scale Language Model Training on GPU Clusters using Megatron-LM", sec. 5.1):
  24 b s h^2 + 4 b s^2 h. The 24bsh^2 are the four h x h attention projections (8bsh^2) and an MLP
  of 8h^2 weights (16bsh^2: GPT's 4h MLP, or SwiGLU's three h x 8h/3 matrices); 4bs^2h are Q K^T
  and softmax(.) V (causal masking is not subtracted, as in the paper). Backward doubles it.
- Decode one token at context length c: 2 N (weights) + 4 L h c (scores and weighted sum over the
  cache) forward FLOPs; the KV cache holds 2 L n_kv d_head c values per sequence.
"""
from __future__ import annotations


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D."""
    return 6.0 * n_params * n_tokens


def layer_forward_flops(batch: int, seq: int, hidden: int) -> float:
    """24 b s h^2 + 4 b s^2 h (one Transformer layer, forward)."""
    return 24.0 * batch * seq * hidden ** 2 + 4.0 * batch * seq ** 2 * hidden


def model_forward_flops(cfg, batch: int, seq: int) -> float:
    """All layers plus the LM head (2 b s h V), forward; training step = 3x this."""
    return cfg.num_hidden_layers * layer_forward_flops(batch, seq, cfg.hidden_size) \
        + 2.0 * batch * seq * cfg.hidden_size * cfg.vocab_size


def decode_flops_per_token(cfg, context: int) -> float:
    """Forward FLOPs of one decoded token attending to `context` cached positions: 2 N_matmul +
    4 L (n_heads d_head) c, where N_matmul counts every weight used in a matmul (blocks + LM head)."""
    return 2.0 * matmul_params(cfg) + 4.0 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * context


def kv_cache_bytes(cfg, batch: int, context: int, dtype_bytes: int = 2) -> int:
    """2 (K and V) x L x n_kv_heads x d_head x context x batch x bytes per value."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * context * batch * dtype_bytes


def matmul_params(cfg) -> int:
    """Weights that take part in a matmul: the blocks' projections and the LM head (not the
    embedding lookup, not norm gains or biases)."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
    return L * (2 * d * q + 2 * d * kv + mlp) + cfg.vocab_size * d
