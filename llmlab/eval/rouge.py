"""ROUGE-1/2/L F-measure (Lin 2004) exactly as Google's `rouge-score` computes it (no stemming).

Tokens: lowercase, every run of characters outside [a-z0-9] becomes a separator (so non-ASCII
text yields no tokens, as in rouge-score). ROUGE-N: clipped n-gram overlap; P = overlap /
#prediction n-grams, R = overlap / #reference n-grams. ROUGE-L: longest common subsequence;
P = LCS / len(prediction), R = LCS / len(reference). F = 2PR / (P + R).
"""
from __future__ import annotations

import re
from collections import Counter

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def rouge_n(reference: str, prediction: str, n: int) -> tuple[float, float, float]:
    """-> (precision, recall, fmeasure)."""
    ref, pred = tokenize(reference), tokenize(prediction)
    rg = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
    pg = Counter(tuple(pred[i:i + n]) for i in range(len(pred) - n + 1))
    overlap = sum(min(c, pg[g]) for g, c in rg.items())
    p = overlap / max(sum(pg.values()), 1)
    r = overlap / max(sum(rg.values()), 1)
    return p, r, _f(p, r)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Classic O(len(a) * len(b)) dynamic programme with one rolling row."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, prediction: str, tokens=tokenize) -> tuple[float, float, float]:
    """-> (precision, recall, fmeasure) of the longest common subsequence of `tokens(text)`."""
    ref, pred = tokens(reference), tokens(prediction)
    if not ref or not pred:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(ref, pred)
    p, r = lcs / len(pred), lcs / len(ref)
    return p, r, _f(p, r)


def rouge(reference: str, prediction: str) -> dict[str, float]:
    """F-measures keyed like rouge-score: rouge1, rouge2, rougeL."""
    return {"rouge1": rouge_n(reference, prediction, 1)[2], "rouge2": rouge_n(reference, prediction, 2)[2],
            "rougeL": rouge_l(reference, prediction)[2]}


_TOKENS = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[a-z0-9]+")


def zh_tokens(text: str) -> list[str]:
    return _TOKENS.findall(text.lower())


def rouge_l_cjk(reference: str, prediction: str) -> float:
    """ROUGE-L F over CJK characters and lowercase ASCII words (punctuation dropped); on English
    text this is exactly rouge-score's rougeL (same tokens, no stemming)."""
    return rouge_l(reference, prediction, zh_tokens)[2]
