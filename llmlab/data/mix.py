"""Seeded weighted mixing of document sources.

At each draw a source is picked with probability w_i / sum(w) among the sources not yet
exhausted (the per-source proportions of LLaMA's mixture are weights of exactly this kind), and
its next document is taken. Over many draws the empirical proportions match the weights; when a
source runs out its share is redistributed over the others.
"""
from __future__ import annotations

import bisect
import itertools
from typing import Callable, Iterable, Iterator

import numpy as np

from llmlab.errors import UserError

# LLaMA-1 pre-training sampling proportions (Touvron et al. 2023, Table 1; the notes' §5.9 table).
# Our packaged sources are much smaller; this preset is for mixing corpora of that kind.
LLAMA_WEIGHTS = {"commoncrawl": 0.670, "c4": 0.150, "github": 0.045, "wikipedia": 0.045, "books": 0.045,
                 "arxiv": 0.025, "stackexchange": 0.020}


def mix_documents(sources: dict[str, Callable[[], Iterable[str]]], weights: dict[str, float],
                  seed: int = 0, max_docs: int | None = None) -> Iterator[tuple[str, str]]:
    """Yield (source_name, document) drawn by `weights` (seeded) until `max_docs` or all sources end."""
    names = [n for n, w in weights.items() if w > 0]
    for n, w in weights.items():
        if n not in sources:
            raise UserError(f"weights: unknown source '{n}'; known: {', '.join(sources)}")
        if w < 0:
            raise UserError(f"weights.{n}: weight must be >= 0, got {w}")
    if not names:
        raise UserError("weights: at least one source needs a positive weight")
    iters = {n: iter(sources[n]()) for n in names}
    w = [float(weights[n]) for n in names]
    cum = list(itertools.accumulate(w))
    rng = np.random.default_rng(seed)
    uniforms: list[float] = []
    produced = 0
    while cum[-1] > 0 and (max_docs is None or produced < max_docs):
        if not uniforms:  # draw uniforms in blocks: one numpy call per 4096 draws, not per draw
            uniforms = rng.random(4096).tolist()[::-1]
        # inverse-CDF draw; an exhausted source has zero width, and bisect_right skips it
        i = bisect.bisect_right(cum, uniforms.pop() * cum[-1])
        try:
            doc = next(iters[names[i]])
        except StopIteration:
            w[i] = 0.0
            cum = list(itertools.accumulate(w))
            continue
        produced += 1
        yield names[i], doc
