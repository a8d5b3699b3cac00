"""objective=prefix_lm (Raffel et al. 2020 §3.3 "prefix LM"; GLM, U-PaLM): cut the window at a
uniformly random point k; the prefix u_<k is read with bidirectional attention and only the rest is
predicted, L = -sum_{t>=k} log P(u_t | u_<t). Needs a prefix decoder (ModelConfig.prefix_lm) or an
encoder-decoder (prefix -> encoder, rest -> decoder)."""
from __future__ import annotations

from llmlab.errors import UserError
from llmlab.train.objectives.base import Example


def split_point(n: int, rng, min_fraction: float, max_fraction: float) -> int:
    """k uniform in [min_fraction * n, max_fraction * n], leaving at least one token each side."""
    lo, hi = max(1, int(min_fraction * n)), min(n - 1, int(max_fraction * n))
    return int(rng.integers(lo, max(lo, hi) + 1))


class PrefixLM:
    name = "prefix_lm"
    special_tokens: list[str] = []

    def __init__(self, min_fraction: float = 0.0, max_fraction: float = 1.0):
        if not 0.0 <= min_fraction <= max_fraction <= 1.0:
            raise UserError(f"prefix fractions must satisfy 0 <= min <= max <= 1, got {min_fraction}, {max_fraction}")
        self.min_fraction, self.max_fraction = min_fraction, max_fraction

    def example(self, tokens, rng, ids, eos_id=None) -> Example:
        tokens = list(tokens)
        k = split_point(len(tokens), rng, self.min_fraction, self.max_fraction)
        return Example(tokens[:k], tokens[k:])
