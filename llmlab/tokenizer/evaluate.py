"""Compression metrics on held-out text: bytes per token (higher = each token carries more text)
and tokens per character (lower = shorter sequences for the model).

Comparison points: HF `tokenizers`' BpeTrainer trained on the same lines at the same vocab size
(same GPT-2 byte-level pre-tokenizer), and SmolLM2-135M's own tokenizer (49152 tokens, trained by
Hugging Face on far more data, mostly English).
"""
from __future__ import annotations

from typing import Callable


def compression(encode_batch: Callable[[list[str]], list[list[int]]], texts: list[str]) -> dict[str, float]:
    ids = encode_batch(texts)
    tokens = sum(len(x) for x in ids)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    chars = sum(len(t) for t in texts)
    return {"bytes_per_token": nbytes / max(tokens, 1), "tokens_per_char": tokens / max(chars, 1), "tokens": tokens}


def train_hf_bpe(lines: list[str], vocab_size: int, special_tokens: list[str], min_frequency: int = 2):
    """HF's BpeTrainer with the GPT-2 byte-level setup our default pattern matches."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return tok


def hf_batch(tok) -> Callable[[list[str]], list[list[int]]]:
    return lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
