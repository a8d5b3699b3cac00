"""Load a LLaMA-architecture GGUF file (llama.cpp's format) into our Transformer.

Quantized tensors (Q4_0/Q4_1/Q8_0/K-quants...) are dequantized to fp32 with the `gguf` package.
llama.cpp's converter permutes the rows of Q and K for its interleaved RoPE; we undo that so
the weights are in HF's "rotate half" layout (the inverse of `permute` in convert_hf_to_gguf.py).

Matrices stored as Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K are also kept as blocks (`model.quantized`, see
`llmlab.kernels.ggml`): inference multiplies with those, reading ~5x fewer bytes per token.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.config import from_dict
from llmlab.model.gguf_file import GGUFFile
from llmlab.errors import UserError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer, from_state_dict

SUPPORTED_ARCHS = ("llama",)

_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_config(reader, source: str) -> ModelConfig:
    arch = reader.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UserError(f"{source}: unsupported GGUF architecture '{arch}' (supported: {', '.join(SUPPORTED_ARCHS)})")
    a = lambda k, d=None: reader.get(f"{arch}.{k}", d)  # noqa: E731
    n_vocab = a("vocab_size") or len(reader.get("tokenizer.ggml.tokens", []))
    names = {t.name for t in reader.tensors}
    heads = a("attention.head_count")
    d = a("embedding_length")
    kw = dict(vocab_size=n_vocab, hidden_size=d, intermediate_size=a("feed_forward_length"),
              num_hidden_layers=a("block_count"), num_attention_heads=heads,
              num_key_value_heads=a("attention.head_count_kv", heads),
              head_dim=a("attention.key_length", d // heads),
              max_position_embeddings=a("context_length"), rope_theta=a("rope.freq_base", 10000.0),
              rms_norm_eps=float(f"{a('attention.layer_norm_rms_epsilon', 1e-5):.7g}"),  # undo f32 storage
              tie_word_embeddings="output.weight" not in names,
              bos_token_id=reader.get("tokenizer.ggml.bos_token_id"),
              eos_token_id=reader.get("tokenizer.ggml.eos_token_id"),
              pad_token_id=reader.get("tokenizer.ggml.padding_token_id"))
    if a("rope.scaling.type") not in (None, "none"):
        raise UserError(f"{source}: unsupported RoPE scaling '{a('rope.scaling.type')}'")
    return from_dict(ModelConfig, {k: v for k, v in kw.items() if v is not None})


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_state_dict(reader, cfg: ModelConfig, blocks: dict | None = None) -> dict[str, torch.Tensor]:
    """fp32 tensors by our names; with `blocks`, also fills it with the block-quantized 2-D
    matrices (name -> QuantWeight, rows in the same order as the fp32 weight)."""
    state = {}
    for t in reader.tensors:
        name = t.name
        if name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            key = "model.norm.weight"
        elif name == "output.weight":
            key = "lm_head.weight"
        elif name.startswith("blk."):
            _, idx, rest = name.split(".", 2)
            if rest not in _NAMES:
                key = f"gguf:{name}"  # reported as unexpected by the strict check
            else:
                key = f"model.layers.{idx}.{_NAMES[rest]}"
        else:
            key = f"gguf:{name}"
        heads = {"q_proj.weight": cfg.num_attention_heads, "k_proj.weight": cfg.num_key_value_heads}
        n_head = next((h for suffix, h in heads.items() if key.endswith(suffix)), None)
        q = reader.blocks(t) if len(t.shape) == 2 else None
        if q is not None:  # decoded once: the fp32 weight comes from the blocks that are kept
            if n_head is not None:  # the same row permutation as the fp32 weight, on whole rows
                q = q.index_rows(_unpermute(torch.arange(t.shape[0]), n_head))
            w = q.dequantize()
            if blocks is not None and not key.startswith("gguf:"):
                blocks[key] = q
        else:
            w = reader.tensor(t)
            if n_head is not None:
                w = _unpermute(w, n_head)
        state[key] = w.contiguous()
    return state


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    from llmlab.kernels.ggml import attach
    reader = GGUFFile(path)
    cfg = gguf_config(reader, str(path))
    blocks: dict = {}
    state = gguf_state_dict(reader, cfg, blocks if dtype == torch.float32 else None)
    model = from_state_dict(cfg, state, str(path), dtype)
    attach(model, blocks)
    return model
