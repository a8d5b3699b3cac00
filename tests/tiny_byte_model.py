"""A byte-level tokenizer and a seeded 2-layer model, shared by the RAG reader tests."""
from __future__ import annotations

import torch

from llmlab.model import ModelConfig, Transformer


class ByteTok:
    eos_id = None
    pad_id = 0

    def encode(self, text, allow_special=False):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def tiny_byte_model(max_position_embeddings: int = 128) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=max_position_embeddings)).eval()
