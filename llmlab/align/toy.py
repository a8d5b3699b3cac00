"""A character tokenizer and toy verifiable tasks, so trainers can be tested on tiny random models.

The tokenizer has the same surface as ByteLevelBPE that the trainers use (encode, decode, eos_id,
pad_id, vocab_size), with a dozen symbols instead of 49k, so a 2-layer model can learn in seconds.
"""
from __future__ import annotations

import random

from llmlab.errors import UserError


class CharTokenizer:
    def __init__(self, alphabet: str = "0123456789+-*=? "):
        self.alphabet = alphabet
        self.pad_id = len(alphabet)
        self.eos_id = len(alphabet) + 1
        self._index = {c: i for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in the toy alphabet {self.alphabet!r}") from None

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return "".join(self.alphabet[i] for i in ids if i < len(self.alphabet))


def toy_sum_prompts(n: int, seed: int = 0, max_operand: int = 4) -> list[dict]:
    """n distinct prompts 'a+b=' with a + b < 10, each with its answer (one digit)."""
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(pairs)
    if n > len(pairs):
        raise UserError(f"toy task: asked for {n} prompts, only {len(pairs)} exist with max_operand={max_operand}")
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs[:n]]
