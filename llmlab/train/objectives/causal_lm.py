"""objective=causal_lm: next-token prediction over the whole window, L = -sum_t log P(u_t | u_<t)
(Radford et al. 2018). Plain windows already are this objective; as an Example it is all target."""
from __future__ import annotations

from llmlab.train.objectives.base import Example


class CausalLM:
    name = "causal_lm"
    special_tokens: list[str] = []

    def example(self, tokens, rng, ids, eos_id=None) -> Example:
        return Example([], list(tokens))
