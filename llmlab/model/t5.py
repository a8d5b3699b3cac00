"""The T5 presets and HF T5 weights: `t5_config(name)`, `load_t5_dir(path)`, `save_t5_dir(model, path)`.

Directories are HF's: config.json is a T5Config (model_type t5), model.safetensors holds HF's tensor
names (which are ours, llmlab/model/encdec.py), so `transformers.T5ForConditionalGeneration`
loads what we save and we load what it saves. Loading is strict.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmlab.checkpoint import check_state_dict, load_tensors, read_json, write_model_dir
from llmlab.errors import UserError
from llmlab.model.encdec import EncDecConfig, EncoderDecoder

T5_PRESETS = {
    # T5 v1.0 small (Raffel et al. 2020): ReLU MLP, tied embeddings
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    # T5 v1.1 small: GeGLU (tanh), untied head, 8 layers of 6 heads
    "t5-v1_1-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                          feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def t5_config(name: str, **overrides) -> EncDecConfig:
    if name not in T5_PRESETS:
        raise UserError(f"unknown T5 preset '{name}'; known: {', '.join(T5_PRESETS)}")
    return EncDecConfig(**{**T5_PRESETS[name], **overrides})


def from_hf_state(cfg: EncDecConfig, state: dict[str, torch.Tensor], source: str,
                  dtype: torch.dtype = torch.float32) -> EncoderDecoder:
    """Our model from an HF T5 state dict, strictly: tied copies (encoder/decoder.embed_tokens,
    and lm_head when tied) must equal `shared`; anything else missing or extra is an error."""
    state = dict(state)
    shared = state.get("shared.weight")
    aliases = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if cfg.tie_word_embeddings:
        aliases.append("lm_head.weight")
    for k in aliases:
        t = state.pop(k, None)
        if t is not None and shared is not None and not torch.equal(t, shared):
            raise UserError(f"{source}: {k} differs from shared.weight (they are tied)")
    model = EncoderDecoder(cfg)
    expected = {k: v for k, v in model.state_dict().items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    check_state_dict(expected, state, source)
    model.load_state_dict({**state, **({"lm_head.weight": state["shared.weight"]} if cfg.tie_word_embeddings else {})})
    return model.to(dtype).eval()


def load_t5_dir(path, dtype: torch.dtype = torch.float32) -> EncoderDecoder:
    """An HF T5 directory (config.json + model.safetensors) -> EncoderDecoder."""
    path = Path(path)
    cfg = EncDecConfig.from_hf(read_json(path / "config.json"), str(path / "config.json"))
    if not (path / "model.safetensors").is_file():
        raise UserError(f"{path}: no model.safetensors (pickled .bin checkpoints are not loaded)")
    return from_hf_state(cfg, load_tensors(path / "model.safetensors"), str(path), dtype)


def save_t5_dir(model: EncoderDecoder, path, dtype=None, generation: dict | None = None,
                extra_files: dict[str, str] | None = None):
    """Atomically write an HF T5 dir that transformers.T5ForConditionalGeneration loads."""
    c = model.config
    state = {k: v.detach().clone() if dtype is None else v.detach().to(dtype) for k, v in model.state_dict().items()}
    dt = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
    gen = {"decoder_start_token_id": c.decoder_start_token_id, "eos_token_id": c.eos_token_id,
           "pad_token_id": c.pad_token_id}
    return write_model_dir(path, {**c.to_hf(), "torch_dtype": dt}, state, {**gen, **(generation or {})}, extra_files)
