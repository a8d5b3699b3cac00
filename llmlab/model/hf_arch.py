"""The HF architectures llmlab loads and writes: config.json <-> ModelConfig and weight names <-> ours.

One `Family` per `model_type`: `config(d)` reads an HF config dict into ModelConfig keyword
arguments (every architectural fact the family implies is set explicitly), `hf_config(cfg)` writes
one back, and `to_ours` / `to_hf` rename (and split / fuse / transpose) the tensors. Which family a
ModelConfig exports as is decided by round trip: the first family whose `config(hf_config(cfg))`
gives cfg back (else it is written as model_type "llmlab", loadable only here).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Callable

import torch

from llmlab.errors import UserError

_COMMON = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
           "tie_word_embeddings", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id"]


def _rope(d: dict) -> dict:
    """rope_theta, rope_scaling and partial_rotary_factor from either HF format (v4 top-level keys,
    v5 `rope_parameters`)."""
    rp = dict(d.get("rope_parameters") or {})
    rs = dict(d.get("rope_scaling") or {})
    out = {}
    theta = d.get("rope_theta", rp.pop("rope_theta", None))
    rp.pop("rope_theta", None)
    if theta is not None:
        out["rope_theta"] = float(theta)
    prf = d.get("partial_rotary_factor", rp.pop("partial_rotary_factor", None))
    rp.pop("partial_rotary_factor", None)
    if prf is not None:
        out["partial_rotary_factor"] = float(prf)
    scaling = rs or rp
    if "type" in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling and scaling.get("rope_type", "default") != "default":
        out["rope_scaling"] = scaling
    return out


def _hf_rope(cfg) -> dict:
    out = {"rope_theta": cfg.rope_theta, "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None}
    if cfg.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = cfg.partial_rotary_factor
    return out


def _first_eos(kw: dict) -> dict:
    if isinstance(kw.get("eos_token_id"), list):
        kw["eos_token_id"] = kw["eos_token_id"][0]
    return kw


def _rename(state: dict, table: list[tuple[str, str]], reverse: bool = False) -> dict:
    """Rename by prefix patterns, 'N' standing for a layer index; tensors no pattern matches stay."""
    pats = [(b, a) if reverse else (a, b) for a, b in table]
    compiled = [(re.compile("^" + re.escape(src).replace("N", r"(\d+)") + r"(\..*|)$"), dst) for src, dst in pats]
    out = {}
    for k, v in state.items():
        for rx, dst in compiled:
            m = rx.match(k)
            if m:
                k = (dst.replace("N", m.group(1)) if "N" in dst else dst) + m.group(m.lastindex)
                break
        out[k] = v
    return out


@dataclass
class Family:
    model_type: str
    architecture: str
    config: Callable[[dict], dict]  # HF config dict -> ModelConfig kwargs
    hf_config: Callable  # ModelConfig -> HF config dict (without architectures / model_type)
    table: list[tuple[str, str]]  # (ours, hf) name prefixes
    to_ours_fn: Callable | None = None  # extra tensor surgery after renaming
    to_hf_fn: Callable | None = None

    def to_ours(self, state: dict, cfg) -> dict:
        state = _rename(state, self.table, reverse=True)
        return self.to_ours_fn(state, cfg) if self.to_ours_fn else state

    def to_hf(self, state: dict, cfg) -> dict:
        state = self.to_hf_fn(dict(state), cfg) if self.to_hf_fn else state
        return _rename(state, self.table)


# ---------------------------------------------------------------- LLaMA-shaped (identity names)
def _llama_like(d: dict, **fixed) -> dict:
    if d.get("hidden_act", "silu") not in ("silu", "swish") and "hidden_act" not in fixed:
        raise UserError(f"model_type {d.get('model_type')}: unsupported hidden_act '{d.get('hidden_act')}'")
    kw = {k: d[k] for k in _COMMON if d.get(k) is not None}
    kw.update(_rope(d))
    kw.setdefault("tie_word_embeddings", False)  # HF LlamaConfig default
    kw.update(fixed)
    return _first_eos(kw)


def _llama_cfg(d):
    return _llama_like(d, attention_bias=bool(d.get("attention_bias", False)), mlp_bias=bool(d.get("mlp_bias", False)))


def _hf_common(cfg, *extra) -> dict:
    out = {k: getattr(cfg, k) for k in _COMMON + list(extra)}
    out.update(_hf_rope(cfg))
    return out


def _llama_hf(cfg):
    return {"hidden_act": "silu", "attention_bias": cfg.attention_bias, "mlp_bias": cfg.mlp_bias,
            **_hf_common(cfg)}


def _mistral_cfg(d):
    return _llama_like(d, sliding_window=d.get("sliding_window"))


def _mistral_hf(cfg):
    return {"hidden_act": "silu", "sliding_window": cfg.sliding_window, **_hf_common(cfg)}


def _qwen2_cfg(d):
    window = d.get("sliding_window") if d.get("use_sliding_window") else None
    if window is not None and d.get("max_window_layers", 0) < d.get("num_hidden_layers", 0):
        raise UserError("qwen2: use_sliding_window on only some layers (max_window_layers) is not supported")
    return _llama_like(d, attention_bias=True, attention_out_bias=False, sliding_window=window)


def _qwen2_hf(cfg):
    return {"hidden_act": "silu", "use_sliding_window": cfg.sliding_window is not None,
            "sliding_window": cfg.sliding_window, "max_window_layers": cfg.num_hidden_layers, **_hf_common(cfg)}


def _gemma_cfg(d):
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    act = "gelu_pytorch_tanh" if act == "gelu_new" else act
    kw = _llama_like(d, mlp="geglu", hidden_act=act, norm_weight_offset=1.0, scale_embeddings=True,
                     attention_bias=bool(d.get("attention_bias", False)))
    kw["tie_word_embeddings"] = d.get("tie_word_embeddings", True)
    kw.setdefault("rms_norm_eps", 1e-6)
    return kw


def _gemma_hf(cfg):
    return {"hidden_act": cfg.hidden_act, "hidden_activation": cfg.hidden_act,
            "attention_bias": cfg.attention_bias, **_hf_common(cfg)}


def _mixtral_cfg(d):
    aux = d.get("router_aux_loss_coef", 0.001) if d.get("output_router_logits") else 0.0
    return _llama_like(d, sliding_window=d.get("sliding_window"), num_local_experts=d.get("num_local_experts", 8),
                       num_experts_per_tok=d.get("num_experts_per_tok", 2), router_aux_loss_coef=aux)


def _mixtral_hf(cfg):
    return {"hidden_act": "silu", "sliding_window": cfg.sliding_window, "num_local_experts": cfg.num_local_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok, "router_aux_loss_coef": cfg.router_aux_loss_coef or 0.001,
            "output_router_logits": cfg.router_aux_loss_coef > 0, **_hf_common(cfg)}


def _mixtral_to_ours(state, cfg):
    """Also accept the original Mixtral layout: block_sparse_moe.experts.E.w1 (gate) / w3 (up) / w2 (down)."""
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.block_sparse_moe."
        if p + "gate.weight" not in state:
            continue
        q = f"model.layers.{i}.mlp."
        state[q + "gate.weight"] = state.pop(p + "gate.weight")
        E = cfg.num_local_experts
        w = [[state.pop(f"{p}experts.{e}.{n}.weight") for e in range(E)] for n in ("w1", "w3", "w2")]
        state[q + "experts.gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(w[0], w[1])])
        state[q + "experts.down_proj"] = torch.stack(w[2])
    return state


# ---------------------------------------------------------------- GPT-2
_GPT2_TABLE = [("model.embed_tokens", "transformer.wte"), ("model.embed_positions", "transformer.wpe"),
               ("model.layers.N.input_layernorm", "transformer.h.N.ln_1"),
               ("model.layers.N.post_attention_layernorm", "transformer.h.N.ln_2"),
               ("model.layers.N.self_attn.o_proj", "transformer.h.N.attn.c_proj"),
               ("model.layers.N.mlp.up_proj", "transformer.h.N.mlp.c_fc"),
               ("model.layers.N.mlp.down_proj", "transformer.h.N.mlp.c_proj"),
               ("model.layers.N.self_attn.qkv", "transformer.h.N.attn.c_attn"),
               ("model.norm", "transformer.ln_f")]


def _gpt2_cfg(d):
    for k, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                  ("scale_attn_weights", True)):
        if d.get(k, ok) != ok:
            raise UserError(f"gpt2: {k}={d[k]} is not supported")
    act = d.get("activation_function", "gelu_new")
    kw = {"vocab_size": d.get("vocab_size", 50257), "hidden_size": d.get("n_embd", 768),
          "num_hidden_layers": d.get("n_layer", 12), "num_attention_heads": d.get("n_head", 12),
          "max_position_embeddings": d.get("n_positions", 1024),
          "intermediate_size": d.get("n_inner") or 4 * d.get("n_embd", 768),
          "rms_norm_eps": d.get("layer_norm_epsilon", 1e-5), "norm": "layernorm", "position": "learned",
          "mlp": "gelu", "hidden_act": "gelu_pytorch_tanh" if act == "gelu_new" else act,
          "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True,
          "initializer_range": d.get("initializer_range", 0.02)}
    kw.update({k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if d.get(k) is not None})
    return _first_eos(kw)


def _gpt2_hf(cfg):
    act = "gelu_new" if cfg.hidden_act == "gelu_pytorch_tanh" else cfg.hidden_act
    return {"vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_hidden_layers,
            "n_head": cfg.num_attention_heads, "n_positions": cfg.max_position_embeddings,
            "n_inner": cfg.intermediate_size, "activation_function": act, "layer_norm_epsilon": cfg.rms_norm_eps,
            "initializer_range": cfg.initializer_range, "tie_word_embeddings": True,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}


_CONV1D = ("self_attn.o_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "self_attn.qkv.weight")


def _gpt2_to_ours(state, cfg):
    """Conv1D stores (in, out): transpose; split the fused c_attn into q, k, v; drop mask buffers."""
    state = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    for k in list(state):
        if k.endswith(_CONV1D):
            state[k] = state[k].t().contiguous()
        if ".self_attn.qkv." in k:
            for name, part in zip("qkv", state.pop(k).chunk(3, dim=0)):
                state[k.replace(".qkv.", f".{name}_proj.")] = part.contiguous()
    return state


def _gpt2_to_hf(state, cfg):
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.self_attn."
        for s in ("weight", "bias"):
            state[p + "qkv." + s] = torch.cat([state.pop(f"{p}{n}_proj.{s}") for n in "qkv"])
    return {k: (v.t().contiguous() if k.endswith(_CONV1D) else v) for k, v in state.items()}


# ---------------------------------------------------------------- BLOOM
_BLOOM_TABLE = [("model.embed_tokens", "transformer.word_embeddings"),
                ("model.embed_layernorm", "transformer.word_embeddings_layernorm"),
                ("model.layers.N.input_layernorm", "transformer.h.N.input_layernorm"),
                ("model.layers.N.post_attention_layernorm", "transformer.h.N.post_attention_layernorm"),
                ("model.layers.N.self_attn.qkv", "transformer.h.N.self_attention.query_key_value"),
                ("model.layers.N.self_attn.o_proj", "transformer.h.N.self_attention.dense"),
                ("model.layers.N.mlp.up_proj", "transformer.h.N.mlp.dense_h_to_4h"),
                ("model.layers.N.mlp.down_proj", "transformer.h.N.mlp.dense_4h_to_h"),
                ("model.norm", "transformer.ln_f")]


def _bloom_cfg(d):
    if d.get("apply_residual_connection_post_layernorm"):
        raise UserError("bloom: apply_residual_connection_post_layernorm=true is not supported")
    h = d.get("hidden_size", d.get("n_embed", 64))
    kw = {"vocab_size": d.get("vocab_size", 250880), "hidden_size": h, "num_hidden_layers": d.get("n_layer", 2),
          "num_attention_heads": d.get("n_head", 8), "intermediate_size": 4 * h,
          "max_position_embeddings": d.get("max_position_embeddings", d.get("seq_length", 2048)),
          "rms_norm_eps": d.get("layer_norm_epsilon", 1e-5), "norm": "layernorm", "position": "alibi",
          "embedding_layernorm": True, "mlp": "gelu", "hidden_act": "gelu_pytorch_tanh", "attention_bias": True,
          "mlp_bias": True, "tie_word_embeddings": d.get("tie_word_embeddings", True),
          "initializer_range": d.get("initializer_range", 0.02)}
    kw.update({k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if d.get(k) is not None})
    return _first_eos(kw)


def _bloom_hf(cfg):
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "n_layer": cfg.num_hidden_layers,
            "n_head": cfg.num_attention_heads, "layer_norm_epsilon": cfg.rms_norm_eps,
            "max_position_embeddings": cfg.max_position_embeddings, "initializer_range": cfg.initializer_range,
            "tie_word_embeddings": cfg.tie_word_embeddings, "apply_residual_connection_post_layernorm": False,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}


def _bloom_to_ours(state, cfg):
    """query_key_value rows are per head (q_h, k_h, v_h) interleaved: (H, 3, head_dim, ...)."""
    H, D = cfg.num_attention_heads, cfg.head_dim
    for k in [k for k in state if ".self_attn.qkv." in k]:
        t = state.pop(k)
        parts = t.view(H, 3, D, *t.shape[1:]).unbind(1)
        for name, part in zip("qkv", parts):
            state[k.replace(".qkv.", f".{name}_proj.")] = part.reshape(H * D, *t.shape[1:]).contiguous()
    return state


def _bloom_to_hf(state, cfg):
    H, D = cfg.num_attention_heads, cfg.head_dim
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.self_attn."
        for s in ("weight", "bias"):
            parts = [state.pop(f"{p}{n}_proj.{s}") for n in "qkv"]
            rest = parts[0].shape[1:]
            state[p + "qkv." + s] = torch.stack([t.view(H, D, *rest) for t in parts], 1).reshape(3 * H * D, *rest)
    return state


# ---------------------------------------------------------------- Phi (-1, -1.5, -2)
_PHI_TABLE = [("model.layers.N.self_attn.o_proj", "model.layers.N.self_attn.dense"),
              ("model.layers.N.self_attn.q_norm", "model.layers.N.self_attn.q_layernorm"),
              ("model.layers.N.self_attn.k_norm", "model.layers.N.self_attn.k_layernorm"),
              ("model.layers.N.mlp.up_proj", "model.layers.N.mlp.fc1"),
              ("model.layers.N.mlp.down_proj", "model.layers.N.mlp.fc2"),
              ("model.norm", "model.final_layernorm")]


def _phi_cfg(d):
    act = d.get("hidden_act", "gelu_new")
    kw = {k: d[k] for k in _COMMON if d.get(k) is not None and k != "rms_norm_eps"}
    kw.update(_rope(d))
    kw.setdefault("partial_rotary_factor", 0.5)
    kw.update({"rms_norm_eps": d.get("layer_norm_eps", 1e-5), "norm": "layernorm", "mlp": "gelu",
               "hidden_act": "gelu_pytorch_tanh" if act == "gelu_new" else act, "parallel_block": True,
               "attention_bias": True, "mlp_bias": True, "lm_head_bias": True, "qk_norm": bool(d.get("qk_layernorm")),
               "tie_word_embeddings": d.get("tie_word_embeddings", False)})
    return _first_eos(kw)


def _phi_hf(cfg):
    out = _hf_common(cfg)
    out.pop("rms_norm_eps")
    out.update({"layer_norm_eps": cfg.rms_norm_eps, "qk_layernorm": cfg.qk_norm,
                "hidden_act": "gelu_new" if cfg.hidden_act == "gelu_pytorch_tanh" else cfg.hidden_act,
                "partial_rotary_factor": cfg.partial_rotary_factor})
    return out


FAMILIES = {f.model_type: f for f in [
    Family("llama", "LlamaForCausalLM", _llama_cfg, _llama_hf, []),
    Family("mistral", "MistralForCausalLM", _mistral_cfg, _mistral_hf, []),
    Family("qwen2", "Qwen2ForCausalLM", _qwen2_cfg, _qwen2_hf, []),
    Family("gemma", "GemmaForCausalLM", _gemma_cfg, _gemma_hf, []),
    Family("mixtral", "MixtralForCausalLM", _mixtral_cfg, _mixtral_hf, [], _mixtral_to_ours),
    Family("gpt2", "GPT2LMHeadModel", _gpt2_cfg, _gpt2_hf, _GPT2_TABLE, _gpt2_to_ours, _gpt2_to_hf),
    Family("bloom", "BloomForCausalLM", _bloom_cfg, _bloom_hf, _BLOOM_TABLE, _bloom_to_ours, _bloom_to_hf),
    Family("phi", "PhiForCausalLM", _phi_cfg, _phi_hf, _PHI_TABLE),
]}

_IGNORED = ("extra", "attn_implementation")  # not architecture: carried or chosen at run time


def family_of(cfg) -> str | None:
    """The HF model_type that expresses cfg exactly, or None (then it saves as model_type llmlab)."""
    from llmlab.model.config import ModelConfig
    want = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in _IGNORED}
    for name, fam in FAMILIES.items():
        try:
            back = ModelConfig(**fam.config({**fam.hf_config(cfg), "model_type": name}))
        except (UserError, TypeError, KeyError):
            continue
        if {k: getattr(back, k) for k in want} == want:
            return name
    return None


def add_prefix(model_type: str, state: dict) -> dict:
    """Hub GPT-2 / BLOOM files often lack the `transformer.` prefix of the *LMHeadModel class."""
    if model_type in ("gpt2", "bloom") and state and not any(k.startswith("transformer.") for k in state):
        return {(k if k.startswith("lm_head.") else "transformer." + k): v for k, v in state.items()}
    return state
