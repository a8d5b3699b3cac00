"""k-shot prompts (Brown et al. 2020): k solved demonstrations, then the query.

Selection of the k demonstrations from a pool:
  random   uniform without replacement, drawn per query: the generator is seeded with (seed, query),
           so each item gets its own draw, and the same item and seed always the same one
  nearest  the k most similar by MiniLM cosine (Liu et al. 2022, KATE)
  bm25     the k with the highest BM25 score for the query's words
  mmr      maximal marginal relevance (Carbonell & Goldstein 1998): greedily pick
           argmax_d  lam * sim(q, d) - (1 - lam) * max_{s in selected} sim(d, s)   (relevance vs diversity)
Order: `selected` (as chosen), `nearest_last` (most similar next to the query, the recency-bias
choice; Zhao et al. 2021 show order changes accuracy), `reversed`, or `random`.
"""
from __future__ import annotations

import random

import numpy as np

from llmlab.errors import UserError

SELECTIONS = ("random", "nearest", "bm25", "mmr")
ORDERS = ("selected", "nearest_last", "reversed", "random")


class DemoSelector:
    def __init__(self, pool: list[dict], key: str = "question", encoder=None):
        if not pool:
            raise UserError("the demonstration pool is empty")
        self.pool, self.key = pool, key
        self._encoder, self._vecs, self._bm25 = encoder, None, None

    def _embed(self):
        if self._vecs is None:
            if self._encoder is None:
                from llmlab.rag.embed import SentenceEncoder
                self._encoder = SentenceEncoder()
            self._vecs = self._encoder.encode([d[self.key] for d in self.pool]).numpy()
        return self._vecs

    def similarities(self, query: str) -> np.ndarray:
        vecs = self._embed()
        return vecs @ self._encoder.encode([query]).numpy()[0]

    def select(self, query: str, k: int, method: str = "random", seed: int = 0, lam: float = 0.5) -> list[int]:
        if method not in SELECTIONS:
            raise UserError(f"selection: unknown '{method}'; known: {', '.join(SELECTIONS)}")
        k = min(k, len(self.pool))
        if k <= 0:
            return []
        if method == "random":  # per item: a seed alone would give every item of a run the same k demonstrations
            return random.Random(f"{seed}:select:{query}").sample(range(len(self.pool)), k)
        if method == "bm25":
            from llmlab.rag.bm25 import BM25, tokenize
            if self._bm25 is None:
                self._bm25 = BM25([tokenize(d[self.key]) for d in self.pool])
            s = self._bm25.scores(tokenize(query))
            return [int(i) for i in np.argsort(-s, kind="stable")[:k]]
        sim = self.similarities(query)
        if method == "nearest":
            return [int(i) for i in np.argsort(-sim, kind="stable")[:k]]
        vecs, chosen = self._embed(), []
        for _ in range(k):
            red = (vecs @ vecs[chosen].T).max(1) if chosen else np.zeros(len(vecs))
            score = lam * sim - (1 - lam) * red
            score[chosen] = -np.inf
            chosen.append(int(np.argmax(score)))
        return chosen

    def order(self, query: str, idx: list[int], how: str = "selected", seed: int = 0) -> list[int]:
        if how not in ORDERS:
            raise UserError(f"order: unknown '{how}'; known: {', '.join(ORDERS)}")
        if how == "reversed":
            return idx[::-1]
        if how == "random":
            idx = list(idx)
            random.Random(f"{seed}:order:{query}").shuffle(idx)  # str seeds hash by SHA-512: stable across runs
            return idx
        if how == "nearest_last":
            sim = self.similarities(query)
            return sorted(idx, key=lambda i: sim[i])
        return idx


def build_prompt(demos: list[dict], query: str, template: str = "Question: {question}\nAnswer: {answer}\n\n",
                 instruction: str = "") -> str:
    """Instruction, then each demonstration through `template`, then the query with the answer left open."""
    head = (instruction + "\n\n") if instruction else ""
    shots = "".join(template.format(**d) for d in demos)
    tail = template.split("{answer}")[0].format(question=query)
    return head + shots + tail.rstrip(" ")
