"""Perplexity and bits per byte, accumulated in streaming fashion (only running sums are kept).

perplexity   = exp(total NLL / #tokens)                 -- depends on the tokenizer
bits/byte    = total NLL (nats) / (ln 2 * #UTF-8 bytes)  -- tokenizer-independent (Gao et al. 2020,
               The Pile, sec. 4): the same text costs the same bytes whatever the vocabulary, so
               models with different tokenizers are comparable. Chance: a uniform guess over a
               vocabulary of V tokens costs #tokens * log2(V) bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class NLLMeter:
    nll: float = 0.0  # nats, summed over predicted tokens
    tokens: int = 0
    bytes: int = 0

    def update(self, nll: float, tokens: int, text_bytes: int) -> None:
        self.nll += nll
        self.tokens += tokens
        self.bytes += text_bytes

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes) if self.bytes else float("nan")

    @property
    def bits_per_token(self) -> float:
        return self.nll / (math.log(2) * self.tokens) if self.tokens else float("nan")


def uniform_bits_per_byte(tokens: int, text_bytes: int, vocab_size: int) -> float:
    """Chance baseline: every token guessed uniformly among `vocab_size`."""
    return tokens * math.log2(vocab_size) / text_bytes
