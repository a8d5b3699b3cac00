"""objective=mlm: BERT's masked language model (Devlin et al. 2019): each token is selected with
probability 0.15; a selected token becomes [MASK] 80 % of the time, a uniformly random token 10 %,
stays itself 10 %; the loss is -sum_{selected t} log P(u_t | corrupted input), read with
bidirectional attention (a prefix decoder whose prefix is the whole row). Selection is Bernoulli
per token, as HF's DataCollatorForLanguageModeling (the original picks exactly round(0.15 n))."""
from __future__ import annotations

import numpy as np

from llmlab.errors import UserError
from llmlab.train.objectives.base import IGNORE, Example

MASK = "[MASK]"


def mask_tokens(tokens, rng: np.random.Generator, mask_id: int, vocab_size: int, probability: float = 0.15,
                protected: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """-> (corrupted inputs, labels with IGNORE where not selected). Random replacements are drawn
    from the ordinary ids 0..vocab_size-1 (the data's vocabulary, no special tokens)."""
    toks = np.asarray(tokens, dtype=np.int64)
    selected = rng.random(len(toks)) < probability
    if protected:
        selected &= ~np.isin(toks, list(protected))
    labels = np.where(selected, toks, IGNORE)
    u = rng.random(len(toks))
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    out = toks.copy()
    out[to_mask] = mask_id
    out[to_random] = rng.integers(0, vocab_size, int(to_random.sum()))
    return out.tolist(), labels.tolist()


class MaskedLM:
    name = "mlm"
    special_tokens = [MASK]

    def __init__(self, probability: float = 0.15, vocab_size: int = 0):
        if not 0.0 < probability < 1.0:
            raise UserError(f"mlm_probability must be in (0, 1), got {probability}")
        self.probability, self.vocab_size = probability, vocab_size

    def example(self, tokens, rng, ids, eos_id=None) -> Example:
        inputs, labels = mask_tokens(tokens, rng, ids[MASK], self.vocab_size, self.probability,
                                     {eos_id} if eos_id is not None else set())
        return Example(inputs, [], labels)
