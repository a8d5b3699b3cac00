"""objective=ul2: UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning
Paradigms"). Each window draws one denoiser; its mode token goes first in the inputs so the model
(and, later, a prompt) can say which kind of task it is:

- [R] regular: span corruption with mean span 3 or 8 at 15 % noise (T5-like);
- [X] extreme: mean span 3 or 8 at 50 % noise, or mean span 64 at 15 % or 50 %;
- [S] sequential: prefix LM, the split uniform in the second half (so ~25 % of tokens are targets).

mixture=ul2 draws the 7 configurations uniformly (the paper's set); mixture=ul2r draws S 50 %,
R 25 %, X 25 % (U-PaLM's UL2R continued training). Span corruption shares the sentinels of
objective=span_corruption (llmlab/train/objectives/span_corruption.py).
"""
from __future__ import annotations

from llmlab.errors import UserError
from llmlab.train.objectives.base import Example
from llmlab.train.objectives.prefix_lm import split_point
from llmlab.train.objectives.span_corruption import SpanCorruption

MODE_TOKENS = {"R": "[R]", "S": "[S]", "X": "[X]"}
# (mode, mean_noise_span_length, noise_density); S has no spans
DENOISERS = [("R", 3.0, 0.15), ("R", 8.0, 0.15), ("S", 0.0, 0.25),
             ("X", 3.0, 0.5), ("X", 8.0, 0.5), ("X", 64.0, 0.15), ("X", 64.0, 0.5)]
MIXTURES = {
    "ul2": [1.0] * 7,
    "ul2r": [0.25 / 2, 0.25 / 2, 0.5, 0.25 / 4, 0.25 / 4, 0.25 / 4, 0.25 / 4],
}


class MixtureOfDenoisers:
    name = "ul2"

    def __init__(self, mixture: str = "ul2", num_sentinels: int = 100):
        if mixture not in MIXTURES:
            raise UserError(f"ul2_mixture '{mixture}' unknown (use one of {', '.join(MIXTURES)})")
        w = MIXTURES[mixture]
        self.weights = [x / sum(w) for x in w]
        self.span = {(mu, r): SpanCorruption(r, mu, num_sentinels) for m, mu, r in DENOISERS if m != "S"}
        sentinels = next(iter(self.span.values())).special_tokens
        self.special_tokens = list(MODE_TOKENS.values()) + sentinels

    def example(self, tokens, rng, ids, eos_id=None) -> Example:
        mode, mu, r = DENOISERS[int(rng.choice(len(DENOISERS), p=self.weights))]
        body = list(tokens)[:len(tokens) - 1]  # room for the mode token
        if mode == "S":
            k = split_point(len(body), rng, 0.5, 1.0)
            ex = Example(body[:k], body[k:])
        else:
            ex = self.span[(mu, r)].example(body, rng, ids, eos_id)
        ex.inputs = [ids[MODE_TOKENS[mode]]] + ex.inputs
        return ex
