"""HF-style model directories: config.json + model.safetensors (+ generation_config.json).

Configs that a real HF architecture expresses (llama, mistral, qwen2, gemma, mixtral, gpt2, bloom,
phi: llmlab/model/hf_arch.py) are written as that class with its own weight names, so
`transformers.AutoModelForCausalLM` loads what we save; other variants are written with
model_type "llmlab" and load only here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.checkpoint import load_tensors, read_json, write_model_dir
from llmlab.config import from_dict
from llmlab.errors import UserError
from llmlab.model.config import ModelConfig
from llmlab.model.hf_arch import FAMILIES, add_prefix, family_of
from llmlab.model.transformer import Transformer, from_state_dict

def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The family's own config.json where one expresses cfg exactly (llmlab/model/hf_arch.py), else
    model_type "llmlab" carrying the whole ModelConfig."""
    dt = str(dtype).removeprefix("torch.")
    name = family_of(cfg)
    if name is None:
        return {"architectures": ["LlmlabForCausalLM"], "model_type": "llmlab", "torch_dtype": dt,
                "llmlab": cfg.to_dict()}
    fam = FAMILIES[name]
    d = {"architectures": [fam.architecture], "model_type": name, "torch_dtype": dt, "use_cache": True,
         "attention_dropout": 0.0, **fam.hf_config(cfg)}
    if name == "llama":
        d["pretraining_tp"] = 1
    return d


def config_from_hf(d: dict, source: str = "config.json") -> ModelConfig:
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(d).__name__}")
    mt = d.get("model_type")
    if mt == "llmlab":
        return from_dict(ModelConfig, d["llmlab"])
    if mt not in FAMILIES:
        raise UserError(f"{source}: unsupported model_type '{mt}' (supported: {', '.join(FAMILIES)}, llmlab)")
    try:
        return ModelConfig(**FAMILIES[mt].config(d))
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


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
    mt = read_json(path / "config.json").get("model_type")
    if mt in FAMILIES:
        state = FAMILIES[mt].to_ours(add_prefix(mt, state), cfg)
    return from_state_dict(cfg, state, str(path), dtype)


def save_hf_dir(model: Transformer, path: str | Path, dtype: torch.dtype | None = None,
                generation: dict | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Atomically write `path` as an HF model dir. extra_files: name -> text (tokenizer files...)."""
    if getattr(model, "is_encoder_decoder", False):  # T5-style: its own HF class (llmlab/model/t5.py)
        from llmlab.model.t5 import save_t5_dir
        return save_t5_dir(model, path, dtype, generation, extra_files)
    cfg = model.config
    state = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    dtype = dtype or next(model.parameters()).dtype
    hf_cfg = config_to_hf(cfg, dtype)
    if hf_cfg["model_type"] in FAMILIES:
        state = FAMILIES[hf_cfg["model_type"]].to_hf(state, cfg)
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    return write_model_dir(path, hf_cfg, state, {**gen, **(generation or {})}, extra_files)
