"""Retrieval evaluation on questions whose source is known.

Queries are the wiki cloze items (llmlab.eval.tasks.cloze.make_item): a sentence of an article
with a span blanked out; the article is the single relevant document. Metrics (binary relevance):

  recall@k  = share of queries whose article is among the top k
  nDCG@10   = mean over queries of 1 / log2(1 + rank) if rank <= 10 else 0 (one relevant document,
              so the ideal DCG is 1; Jarvelin & Kekalainen 2002)
"""
from __future__ import annotations

import math
import random


def cloze_queries(extracts: list[str], n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(query, index of its article) for up to n random articles; the blank is removed."""
    from llmlab.eval.tasks.cloze import make_item
    rng = random.Random(seed)
    order = list(range(len(extracts)))
    rng.shuffle(order)
    out = []
    for i in order:
        it = make_item(extracts[i], rng)
        if it is not None:
            out.append((" ".join(it["question"].replace("_____", " ").split()), i))
            if len(out) == n:
                break
    return out


def rank_of(ranked: list[int], gold: int) -> int | None:
    for r, d in enumerate(ranked, 1):
        if d == gold:
            return r
    return None


def recall_at_k(runs: list[list[int]], golds: list[int], k: int) -> float:
    return sum((rank_of(r[:k], g) is not None) for r, g in zip(runs, golds)) / max(len(golds), 1)


def ndcg_at_k(runs: list[list[int]], golds: list[int], k: int = 10) -> float:
    total = 0.0
    for r, g in zip(runs, golds):
        rank = rank_of(r[:k], g)
        total += 1 / math.log2(1 + rank) if rank else 0.0
    return total / max(len(golds), 1)
