"""Write a model of ours as a GGUF file (llama.cpp's format, architecture "llama").

Encoders (ggml's reference `quantize_row_*_ref`, 32 weights per block, written here in torch and
equal to `gguf.quants.quantize` bit for bit, tested):
  Q8_0  d = absmax / 127,            q = roundf(w / d)                  (round half away from 0)
  Q4_0  d = (signed max) / -8,       q = min(15, trunc(w / d + 8.5))    w' = d (q - 8)
  Q4_1  d = (max - min) / 15, m=min, q = min(15, trunc((w - m) / d + 0.5))
K-quants Q6_K, Q4_K, Q5_K (256-weight super-blocks with sub-block scales): `kquants.py`, decoded
by `gguf.quants.dequantize` in the tests. A matrix whose rows are not a multiple of 256 is
written as Q8_0 instead (llama.cpp falls back likewise).
Norm weights and 1-D tensors stay F32; with a 4-bit type the token embedding and LM head are
written Q8_0, with Q4_K/Q5_K as Q6_K (llama.cpp likewise keeps them at higher precision). Q and K rows are permuted to llama.cpp's interleaved-RoPE
layout (the inverse of the loader's `_unpermute`).

Metadata: the llama.* hyper-parameters our loader and llama.cpp read, and the tokenizer
(tokenizer.ggml.model "gpt2": tokens, token types, merges, pre-tokenizer name, special ids) with
its chat template. The file is written under a temporary name in the same directory and renamed
when complete: a failure leaves no partial file.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.checkpoint import atomic_path
from llmlab.errors import UserError

QK = 32
FORMATS = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")
_KQUANTS = ("Q4_K", "Q5_K", "Q6_K")


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C roundf (half away from zero), the exact formula gguf-py uses."""
    a = x.abs()
    f = torch.floor(a)
    return torch.sign(x) * (f + torch.floor(2 * (a - f)))


def _f16_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).view(torch.uint8).reshape(t.shape[0], 2)


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    q = q.to(torch.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def encode_blocks(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """w (rows, k), k % 32 == 0 -> uint8 (rows, k / 32 * block bytes) in GGUF byte layout."""
    rows, k = w.shape
    if k % QK:
        raise UserError(f"{fmt} needs rows that are a multiple of {QK} weights, got {k}")
    b = w.detach().float().reshape(-1, QK)
    if fmt == "Q8_0":
        d = b.abs().amax(1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        out = torch.cat([_f16_bytes(d), _roundf(b * inv).to(torch.int8).view(torch.uint8)], 1)
    elif fmt == "Q4_0":
        mx = b.gather(1, b.abs().argmax(1, keepdim=True))
        d = mx / -8
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc(b * inv + 8.5).clamp(0, 15)
        out = torch.cat([_f16_bytes(d), _nibbles(q)], 1)
    elif fmt == "Q4_1":
        mx, mn = b.amax(1, keepdim=True), b.amin(1, keepdim=True)
        d = (mx - mn) / 15
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc((b - mn) * inv + 0.5).clamp(0, 15)
        out = torch.cat([_f16_bytes(d), _f16_bytes(mn), _nibbles(q)], 1)
    else:
        raise UserError(f"no block encoder for {fmt}")
    return out.reshape(rows, -1)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half rows -> llama.cpp's interleaved layout (convert_hf_to_gguf.py's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


_OURS_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(key: str) -> str:
    if key == "model.embed_tokens.weight":
        return "token_embd.weight"
    if key == "model.norm.weight":
        return "output_norm.weight"
    if key == "lm_head.weight":
        return "output.weight"
    parts = key.split(".", 3)
    if key.startswith("model.layers.") and parts[3] in _OURS_TO_GGUF:
        return f"blk.{parts[2]}.{_OURS_TO_GGUF[parts[3]]}"
    raise UserError(f"weight '{key}' has no GGUF name (only LLaMA-architecture models export to GGUF)")


def _pre_name(tok) -> str:
    from llmlab.tokenizer.patterns import GGUF_PRE
    for name in ("smollm", "gpt2", "llama-bpe"):
        if GGUF_PRE[name] == tok.pattern:
            return name
    raise UserError("the tokenizer's pre-tokenizer pattern has no GGUF name (gpt2, smollm, llama-bpe)")


def _add_tokenizer(wr, tok) -> None:
    from llmlab.tokenizer.bytelevel import bytes_to_token
    tokens, types = [], []
    for i, b in enumerate(tok.vocab):
        special = tok.special_of_id.get(i)
        tokens.append(special if special is not None else bytes_to_token(b))
        types.append(3 if special is not None else 1)  # CONTROL / NORMAL
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre(_pre_name(tok))
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges([f"{bytes_to_token(a)} {bytes_to_token(b)}" for a, b in tok.merges])
    for setter, tid in ((wr.add_bos_token_id, tok.bos_id), (wr.add_eos_token_id, tok.eos_id),
                        (wr.add_pad_token_id, tok.pad_id)):
        if tid is not None:
            setter(tid)
    if tok.chat_template:
        wr.add_chat_template(tok.chat_template)


def _tensor_type(fmt: str, gname: str, w: torch.Tensor) -> str:
    if w.dim() != 2:
        return "F32"
    if gname in ("token_embd.weight", "output.weight") and fmt not in ("F32", "F16", "Q8_0", "Q6_K"):
        # the embedding / LM head at 4-5 bits costs far more quality than it saves
        fmt = "Q6_K" if fmt in _KQUANTS else "Q8_0"
    if fmt in _KQUANTS and w.shape[1] % 256:
        return "Q8_0"
    return fmt


# llama.* metadata: GGUFWriter.add_<key>(the ModelConfig field), in the order written
_LLAMA_METADATA = {
    "context_length": "max_position_embeddings", "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
    "head_count": "num_attention_heads", "head_count_kv": "num_key_value_heads",
    "key_length": "head_dim", "value_length": "head_dim", "rope_dimension_count": "head_dim",
    "rope_freq_base": "rope_theta", "layer_norm_rms_eps": "rms_norm_eps", "vocab_size": "vocab_size",
}


def write_gguf(model, tok, path: str | Path, fmt: str = "Q8_0", name: str = "llmlab") -> dict:
    """Write `model` (+ tokenizer) to `path` atomically; -> {'bytes', 'types': {type: count}}."""
    import gguf
    if fmt not in FORMATS:
        raise UserError(f"unknown GGUF type '{fmt}' (one of: {', '.join(FORMATS)})")
    cfg = model.config
    llama = (cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.position == "rope"
             and not cfg.mlp_bias and not cfg.attention_bias and not cfg.beyond_llama_gpt())
    if not llama:
        raise UserError("GGUF export supports LLaMA-architecture models (RMSNorm, SwiGLU, RoPE, no biases)")
    path = Path(path)
    counts: dict[str, int] = {}
    with atomic_path(path) as tmp:
        wr = gguf.GGUFWriter(tmp, "llama")
        wr.add_name(name)
        for key, field in _LLAMA_METADATA.items():
            getattr(wr, f"add_{key}")(getattr(cfg, field))
        _add_tokenizer(wr, tok)
        state = model.state_dict()
        for key, w in state.items():
            if key == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            if key.endswith((".inv_freq", "_cached")) or key.startswith("rope."):
                continue
            w = w.detach().float().cpu()
            gname = gguf_name(key)
            heads = cfg.num_attention_heads if key.endswith("q_proj.weight") else (
                cfg.num_key_value_heads if key.endswith("k_proj.weight") else None)
            if heads is not None:
                w = _permute(w, heads)
            t = _tensor_type(fmt, gname, w)
            counts[t] = counts.get(t, 0) + 1
            if t == "F32":
                wr.add_tensor(gname, w.numpy())
            elif t == "F16":
                wr.add_tensor(gname, w.to(torch.float16).numpy())
            elif t in _KQUANTS:
                from llmlab.quant import kquants
                enc = {"Q4_K": kquants.encode_q4_k, "Q5_K": kquants.encode_q5_k, "Q6_K": kquants.encode_q6_k}[t]
                wr.add_tensor(gname, enc(w).numpy(), raw_dtype=getattr(gguf.GGMLQuantizationType, t))
            else:
                wr.add_tensor(gname, encode_blocks(w, t).numpy(), raw_dtype=getattr(gguf.GGMLQuantizationType, t))
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
    return {"bytes": path.stat().st_size, "types": counts}

