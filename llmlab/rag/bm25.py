"""BM25 Okapi (Robertson & Zaragoza 2009) over an inverted index, scored eagerly per term.

    score(q, d) = sum_{t in q} idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln((N - n_t + 0.5) / (n_t + 0.5)),  floored at epsilon * mean(idf) where negative

(the `rank_bm25.BM25Okapi` variant, whose scores ours equal; a query term repeated counts twice).
Each term's posting list stores its documents and their precomputed term weights, so a query costs
one vector add per query term instead of a pass over every document (the bm25s idea).

Tokens: lowercased \\w+ words; runs of Chinese characters are cut into words by jieba.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|\w+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def tokenize(text: str) -> list[str]:
    out = []
    for m in _WORD.finditer(text.lower()):
        w = m.group(0)
        if _HAN.match(w):
            import jieba
            jieba.setLogLevel(60)  # no "Building prefix dict" chatter on stderr
            out += [t for t in jieba.lcut(w) if t.strip()]
        else:
            out.append(w)
    return out


class BM25:
    def __init__(self, corpus: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.n_docs = len(corpus)
        lens = np.array([len(d) for d in corpus], dtype=np.float64)
        self.avgdl = float(lens.sum() / max(self.n_docs, 1))
        vocab: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        for i, doc in enumerate(corpus):
            for t, c in Counter(doc).items():
                rows.append(vocab.setdefault(t, len(vocab)))
                cols.append(i)
                tfs.append(c)
        self.vocab = vocab
        rows_a = np.array(rows, dtype=np.int64)
        order = np.argsort(rows_a, kind="stable")
        self.docs = np.array(cols, dtype=np.int64)[order]
        tf = np.array(tfs, dtype=np.float64)[order]
        df = np.bincount(rows_a, minlength=len(vocab)).astype(np.float64)
        self.offsets = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        idf = np.log(self.n_docs - df + 0.5) - np.log(df + 0.5)
        if len(idf):
            idf[idf < 0] = self.epsilon * idf.mean()
        self.idf = idf
        norm = k1 * (1 - b + b * lens[self.docs] / max(self.avgdl, 1e-12))
        self.weights = idf[np.repeat(np.arange(len(vocab)), df.astype(np.int64))] * tf * (k1 + 1) / (tf + norm)

    def scores(self, query: list[str]) -> np.ndarray:
        out = np.zeros(self.n_docs)
        for t in query:
            j = self.vocab.get(t)
            if j is None:
                continue
            s, e = self.offsets[j], self.offsets[j + 1]
            out[self.docs[s:e]] += self.weights[s:e]  # a term's documents are distinct
        return out

    def top_k(self, query: list[str], k: int) -> list[tuple[int, float]]:
        s = self.scores(query)
        k = min(k, self.n_docs)
        if k <= 0:
            return []
        idx = np.argpartition(-s, k - 1)[:k]
        idx = idx[np.lexsort((idx, -s[idx]))]
        return [(int(i), float(s[i])) for i in idx if s[i] > 0]


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60,
                           weights: list[float] | None = None) -> list[tuple[int, float]]:
    """RRF (Cormack et al. 2009): score(d) = sum over rankings r of w_r / (k + rank_r(d)), ranks from 1;
    w_r = 1 unless `weights` are given (weighted RRF, as in Elasticsearch/Vespa hybrid search)."""
    weights = [1.0] * len(rankings) if weights is None else weights
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    score: dict[int, float] = {}
    for w, ranking in zip(weights, rankings):
        for r, d in enumerate(ranking, 1):
            score[d] = score.get(d, 0.0) + w / (k + r)
    return sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))


def convex_fusion(scored: list[list[tuple[int, float]]],
                  weights: list[float] | None = None) -> list[tuple[int, float]]:
    """Convex combination of min-max normalised scores (CombSUM; Bruch et al. 2023, "An Analysis of
    Fusion Functions for Hybrid Retrieval"): score(d) = sum_r w_r * (s_r(d) - min_r) / (max_r - min_r)
    over each retriever's returned list; a document a retriever did not return gets that list's
    minimum (0 after normalising). Unlike RRF it keeps a retriever's margin: a document one retriever
    ranks first by a wide gap is not outvoted by documents both rank moderately."""
    weights = [1.0] * len(scored) if weights is None else weights
    if len(weights) != len(scored):
        raise ValueError(f"{len(weights)} weights for {len(scored)} score lists")
    score: dict[int, float] = {}
    for w, run in zip(weights, scored):
        if not run:
            continue
        vals = [s for _, s in run]
        lo, span = min(vals), max(vals) - min(vals)
        for d, s in run:
            score[d] = score.get(d, 0.0) + w * ((s - lo) / span if span > 0 else 1.0)
    return sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))
