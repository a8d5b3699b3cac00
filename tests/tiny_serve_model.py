"""A tiny random model with SmolLM2's tokenizer, saved as an HF-style dir: fast server, CLI,
fuzz and soak tests with a real tokenizer and chat template (built with llmlab's own config)."""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_model(tokenizer, seed: int = 0, ctx: int = 256):
    from llmlab.model.config import ModelConfig
    from llmlab.model.transformer import Transformer
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx)
    return Transformer(cfg).eval()


def save_tiny_dir(path: str | Path, seed: int = 0, ctx: int = 256) -> Path:
    """-> path, an HF-style dir (config.json, model.safetensors, tokenizer.json, chat template)."""
    from llmlab.model.hf import save_hf_dir
    from llmlab.model.load import packaged_path
    from llmlab.tokenizer.bpe import load_tokenizer
    tok = load_tokenizer(packaged_path("smollm2"))
    path = Path(path)
    save_hf_dir(tiny_model(tok, seed, ctx), path)
    tok.save(path / "_tok")
    for f in (path / "_tok").iterdir():
        f.rename(path / f.name)
    (path / "_tok").rmdir()
    return path
