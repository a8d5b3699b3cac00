"""Eval generation runs a task's prompts together through the engine and gives what one prompt
at a time gives (stop strings, truncation, token counts)."""
from __future__ import annotations

import torch

from llmlab.eval.generation import greedy_generate, greedy_generate_many
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


def test_batched_eval_generation_equals_one_at_a_time(smollm2_tokenizer):
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    model = Transformer(cfg).eval()
    prompts = [tok.encode(t) for t in ["Question: 2 + 2?\nAnswer:", "The sky is", "def f(x):\n    return",
                                       "word " * 150]]  # the last one is cut on the left
    stops = ["\n", "e"]
    many = greedy_generate_many(model, tok, prompts, 12, stops)
    one = [greedy_generate(model, tok, p, 12, stops) for p in prompts]
    assert many == one
    assert many[-1].truncated and not many[0].truncated
    assert any(g.tokens < 12 for g in many)  # a stop string ended some early
