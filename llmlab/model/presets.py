"""Named architectures with their real shapes (the sizes of the published checkpoints) and HF class.

`preset_config(name, **overrides)` -> ModelConfig. `train_model_kwargs(name, heads)` keeps only the
architectural choices (positions, norms, MLP, attention pattern, MoE routing, block layout) for
`llmlab train preset=NAME`, which sizes the model with its `depth` dial instead: a real 7B shape is
not trainable on a laptop, the same design at depth 4 is.
"""
from __future__ import annotations

from llmlab.errors import UserError
from llmlab.model.config import ModelConfig

_GPT = dict(norm="layernorm", position="learned", mlp="gelu", attention_bias=True, mlp_bias=True)
_LLAMA = dict(norm="rmsnorm", position="rope", mlp="swiglu", tie_word_embeddings=False)

PRESETS: dict[str, dict] = {
    # GPT-2 small (Radford et al. 2019): post-GPT-1 pre-norm, learned positions, GeLU(tanh), all biases
    "gpt2": dict(_GPT, vocab_size=50257, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=1024, bos_token_id=50256, eos_token_id=50256),
    # LLaMA-2 7B (Touvron et al. 2023): RMSNorm, SwiGLU, RoPE, no biases
    "llama": dict(_LLAMA, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2),
    # Mistral 7B v0.1 (Jiang et al. 2023): LLaMA + GQA 4:1 + sliding window 4096
    "mistral": dict(_LLAMA, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                    sliding_window=4096, bos_token_id=1, eos_token_id=2),
    # Mixtral 8x7B (Jiang et al. 2024): Mistral's attention, 8 SwiGLU experts, top-2
    "mixtral": dict(_LLAMA, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                    rope_theta=1e6, num_local_experts=8, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2),
    # Qwen2 0.5B (Yang et al. 2024): LLaMA + q/k/v biases, GQA 7:1, theta 1e6, tied
    "qwen2": dict(_LLAMA, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, attention_bias=True, attention_out_bias=False, tie_word_embeddings=True),
    # Gemma 2B (Gemma Team 2024): MQA, head_dim 256, GeGLU(tanh), sqrt(d) embeddings, (1 + g) RMSNorm
    "gemma": dict(norm="rmsnorm", position="rope", mlp="geglu", hidden_act="gelu_pytorch_tanh", vocab_size=256000,
                  hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                  num_key_value_heads=1, head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6,
                  norm_weight_offset=1.0, scale_embeddings=True, tie_word_embeddings=True),
    # BLOOM 560M (BigScience 2022): ALiBi, LayerNorm after the embedding, GeLU MLP, biases
    "bloom": dict(_GPT, position="alibi", embedding_layernorm=True, vocab_size=250880, hidden_size=1024,
                  num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=2048),
    # Phi-2 (Microsoft 2023): parallel block, partial RoPE (40 %), GeLU MLP, LM-head bias
    "phi": dict(norm="layernorm", position="rope", partial_rotary_factor=0.4, mlp="gelu", parallel_block=True,
                attention_bias=True, mlp_bias=True, lm_head_bias=True, tie_word_embeddings=False, vocab_size=51200,
                hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                max_position_embeddings=2048),
    # PaLM 8B (Chowdhery et al. 2022; no HF class): parallel block, MQA, SwiGLU 4d, RoPE, no biases, tied
    "palm": dict(norm="layernorm", position="rope", mlp="swiglu", parallel_block=True, vocab_size=256000,
                 hidden_size=4096, intermediate_size=16384, num_hidden_layers=32, num_attention_heads=16,
                 num_key_value_heads=1, head_dim=256, max_position_embeddings=2048, tie_word_embeddings=True),
    # DeepSeekMoE 16B (Dai et al. 2024; MHA variant, no HF class here): 64 fine-grained experts
    # (1/4 width), top-6, 2 shared experts
    "deepseek-moe": dict(_LLAMA, vocab_size=102400, hidden_size=2048, intermediate_size=10944, num_hidden_layers=28,
                         num_attention_heads=16, max_position_embeddings=4096, num_local_experts=64,
                         num_experts_per_tok=6, moe_intermediate_size=1408, n_shared_experts=2,
                         norm_topk_prob=False),
}
HF_CLASS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "mixtral": "MixtralForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM",
            "bloom": "BloomForCausalLM", "phi": "PhiForCausalLM"}
_SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "moe_intermediate_size",
              "bos_token_id", "eos_token_id", "sliding_window")


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown architecture preset '{name}'; known: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def train_model_kwargs(name: str, heads: int, width: int, seq_len: int) -> dict:
    """The preset's design at the size `llmlab train` derives (heads, width): same GQA ratio (at
    least one KV head), MoE experts of the same relative width, a sliding window of the same
    fraction of the context (at least 1/4 of the training window, so it is not a no-op)."""
    p = PRESETS[name]
    kw = {k: v for k, v in p.items() if k not in _SIZE_KEYS}
    H = p["num_attention_heads"]
    ratio = H // p.get("num_key_value_heads", H)
    kv = max(1, heads // ratio)
    kw["num_key_value_heads"] = kv if heads % kv == 0 else heads
    if "intermediate_size" in p:  # keep the MLP's width ratio
        kw["intermediate_size"] = max(8, round(width * p["intermediate_size"] / p["hidden_size"] / 8) * 8)
    if "moe_intermediate_size" in p:
        kw["moe_intermediate_size"] = max(8, round(width * p["moe_intermediate_size"] / p["hidden_size"] / 8) * 8)
    if p.get("num_local_experts") and not p.get("router_aux_loss_coef"):
        kw["router_aux_loss_coef"] = 0.01  # Switch's alpha: training from scratch needs the balance term
    if "partial_rotary_factor" in p:  # an even number of rotated channels at head_dim 64
        kw["partial_rotary_factor"] = max(2, 2 * round(64 * p["partial_rotary_factor"] / 2)) / 64
    if "sliding_window" in p:
        kw["sliding_window"] = max(1, seq_len * p["sliding_window"] // p["max_position_embeddings"], seq_len // 4)
    return kw
