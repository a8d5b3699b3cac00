"""Exact match and token F1 with the SQuAD v1.1 answer normalisation (Rajpurkar et al. 2016).

normalize: lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.
F1 is over normalised whitespace tokens with multiset overlap; with several gold answers the
best one counts (max over golds), as in the official evaluate-v1.1.py. (The notes define EM as
character-exact; that strict variant is `exact_match(..., normalize=False)`.)
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str, normalize: bool = True) -> float:
    """SQuAD EM; normalize=False is the strict character-level variant ("Paris." != "Paris")."""
    if not normalize:
        return float(prediction == gold)
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    return max(metric(prediction, g) for g in golds)


def generated_em_f1(ctx, items: Sequence[dict], max_new_tokens: int) -> tuple[float, float, int]:
    """Greedy one-line answers to each item's "prompt" (up to a newline), scored against its
    "answer" -> (mean exact match, mean token F1, n) with SQuAD's normalisation."""
    em = f1 = 0.0
    gens = ctx.generate_many([it["prompt"] for it in items], max_new_tokens=max_new_tokens, stop=["\n"])
    for it, g in zip(items, gens):
        pred = g.text.strip()
        em += exact_match(pred, it["answer"])
        f1 += token_f1(pred, it["answer"])
    n = max(len(items), 1)
    return em / n, f1 / n, len(items)

