"""HF-style model directories: config.json + model.safetensors (+ generation_config.json).

LLaMA-shaped configs are written as `LlamaForCausalLM`, so `transformers.AutoModelForCausalLM`
loads what we save; other variants (LayerNorm, GELU, learned positions) are written with
model_type "llmlab" and load only here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.checkpoint import atomic_dir, load_tensors, read_json, save_tensors, write_json
from llmlab.config import from_dict
from llmlab.errors import UserError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer, from_state_dict

_LLAMA_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
               "tie_word_embeddings", "attention_bias", "mlp_bias", "initializer_range",
               "bos_token_id", "eos_token_id", "pad_token_id"]


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    dt = str(dtype).removeprefix("torch.")
    if cfg.is_llama:
        d = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
             "rope_scaling": None, "attention_dropout": 0.0, "pretraining_tp": 1, "use_cache": True,
             "torch_dtype": dt}
        d.update({k: getattr(cfg, k) for k in _LLAMA_KEYS})
        return d
    return {"architectures": ["LlmlabForCausalLM"], "model_type": "llmlab", "torch_dtype": dt,
            "llmlab": cfg.to_dict()}


def config_from_hf(d: dict, source: str = "config.json") -> ModelConfig:
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(d).__name__}")
    mt = d.get("model_type")
    if mt == "llmlab":
        return from_dict(ModelConfig, d["llmlab"])
    if mt not in ("llama", "mistral", "qwen2"):
        raise UserError(f"{source}: unsupported model_type '{mt}' (supported: llama, mistral, qwen2, llmlab)")
    if d.get("hidden_act", "silu") != "silu":
        raise UserError(f"{source}: unsupported hidden_act '{d.get('hidden_act')}'")
    rs = d.get("rope_scaling") or d.get("rope_parameters")
    if rs and rs.get("rope_type", rs.get("type", "default")) not in ("default", None):
        raise UserError(f"{source}: unsupported rope_scaling {rs}")
    kw = {k: d[k] for k in _LLAMA_KEYS if k in d and d[k] is not None}
    if rs and "rope_theta" in rs and "rope_theta" not in kw:
        kw["rope_theta"] = rs["rope_theta"]
    if isinstance(kw.get("eos_token_id"), list):
        kw["eos_token_id"] = kw["eos_token_id"][0]
    kw.setdefault("tie_word_embeddings", False)  # HF's LlamaConfig default
    if mt == "qwen2":
        kw["attention_bias"] = True
    return from_dict(ModelConfig, kw)


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index)["weight_map"].values()))
        return [path / f for f in files]
    raise UserError(f"{path}: no model.safetensors (or model.safetensors.index.json); "
                    "pickled .bin checkpoints are not loaded (they can run arbitrary code)")


def load_hf_dir(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model directory not found: {path}")
    cfg = config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        state.update(load_tensors(f))
    return from_state_dict(cfg, state, str(path), dtype)


def save_hf_dir(model: Transformer, path: str | Path, dtype: torch.dtype | None = None,
                generation: dict | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Atomically write `path` as an HF model dir. extra_files: name -> text (tokenizer files...)."""
    cfg = model.config
    state = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    dtype = dtype or next(model.parameters()).dtype
    with atomic_dir(path) as tmp:
        write_json(tmp / "config.json", config_to_hf(cfg, dtype))
        save_tensors(tmp / "model.safetensors", state)
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
               "pad_token_id": cfg.pad_token_id, **(generation or {})}
        write_json(tmp / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(path)
