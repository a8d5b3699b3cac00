"""Model-based quality filters (d003 sec. 2.3; CCNet, Wenzek et al. 2020; GPT-3 App. A):

- `QualityClassifier`: logistic regression on hashed word uni+bigram counts (log(1+tf)),
  reference text (e.g. Wikipedia) = 1 vs other text = 0; a document is kept when
  P(reference) >= threshold. Trained by L-BFGS on sklearn's objective
  C sum_i logloss_i + ||w||^2 / 2 (intercept not penalised), so its weights equal
  sklearn.linear_model.LogisticRegression's (the test's reference). The notes' caveat holds:
  it also drops good text unlike the reference (dialect, colloquial), so counts go in the report.
- `NgramLM`: a word n-gram LM with interpolated absolute discounting, trained on reference
  text; `perplexity(text)` = exp(-mean log p(w_i | w_{i-n+1..i-1})), end-of-document included.
  CCNet keeps the low-perplexity documents under a 5-gram KenLM trained on Wikipedia.

Both take the tokenisation of `llmlab.data.quality.words` (a Han character is a word).
"""
from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np

from llmlab.data.quality import words


def _bucket(s: str, dim: int) -> int:
    return zlib.crc32(s.encode("utf-8")) % dim


def hashed_features(texts: Sequence[str], dim: int = 1 << 18):
    """CSR matrix (len(texts), dim): log(1 + count) of each hashed lowercase unigram and bigram."""
    from scipy.sparse import csr_matrix
    rows, cols, vals = [], [], []
    for r, text in enumerate(texts):
        ws = [w.lower() for w in words(text)]
        c = Counter(_bucket(w, dim) for w in ws)
        c.update(_bucket(a + " " + b, dim) for a, b in zip(ws, ws[1:]))
        for k, v in c.items():
            rows.append(r)
            cols.append(k)
            vals.append(math.log1p(v))
    return csr_matrix((vals, (rows, cols)), shape=(len(texts), dim), dtype=np.float64)


class QualityClassifier:
    def __init__(self, dim: int = 1 << 18, C: float = 1.0):
        self.dim, self.C = dim, C
        self.coef = np.zeros(dim)
        self.intercept = 0.0

    def fit(self, positives: Sequence[str], negatives: Sequence[str]) -> "QualityClassifier":
        from scipy.optimize import minimize
        if not positives or not negatives:
            raise ValueError("QualityClassifier.fit needs reference (positive) and other (negative) texts")
        X = hashed_features(list(positives) + list(negatives), self.dim)
        y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        s = 2 * y - 1

        def f(theta):
            w, b = theta[:-1], theta[-1]
            z = s * (X @ w + b)
            loss = self.C * np.logaddexp(0, -z).sum() + 0.5 * w @ w
            g = -self.C * s * _sigmoid(-z)
            return loss, np.r_[X.T @ g + w, g.sum()]

        res = minimize(f, np.zeros(self.dim + 1), jac=True, method="L-BFGS-B",
                       options={"maxiter": 1000, "gtol": 1e-8, "ftol": 1e-12})
        self.coef, self.intercept = res.x[:-1], float(res.x[-1])
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """P(reference-like) per text."""
        return _sigmoid(hashed_features(texts, self.dim) @ self.coef + self.intercept)


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


class NgramLM:
    """Interpolated absolute discounting (Ney et al. 1994), discount d, backing off to the
    add-one unigram: p(w | h) = max(c(h w) - d, 0) / c(h) + d N1+(h .) / c(h) p(w | h'),
    and p(w | h) = p(w | h') for an unseen history h. Words never seen map to <unk>."""

    BOS, EOS, UNK = "<s>", "</s>", "<unk>"

    def __init__(self, n: int = 3, discount: float = 0.75):
        if n < 1 or not 0 < discount < 1:
            raise ValueError("NgramLM: n >= 1 and 0 < discount < 1")
        self.n, self.d = n, discount
        self.counts: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(n)]
        self.vocab: set[str] = set()
        self._totals: dict = {}

    def _tokens(self, text: str) -> list[str]:
        return [w.lower() for w in words(text)]

    def fit(self, texts: Iterable[str]) -> "NgramLM":
        for text in texts:
            ws = self._tokens(text)
            self.vocab.update(ws)
            seq = [self.BOS] * (self.n - 1) + ws + [self.EOS]
            for i in range(self.n - 1, len(seq)):
                for k in range(self.n):  # history of length k
                    self.counts[k][tuple(seq[i - k:i])][seq[i]] += 1
        self.vocab.update((self.EOS, self.UNK))
        self.unigram_total = sum(self.counts[0][()].values())
        return self

    def prob(self, word: str, history: Sequence[str]) -> float:
        p = (self.counts[0][()].get(word, 0) + 1) / (self.unigram_total + len(self.vocab))
        for k in range(1, self.n):
            h = tuple(history[len(history) - k:]) if k else ()
            c = self.counts[k].get(h)
            if not c:
                continue
            total = self._total(k, h, c)
            p = max(c.get(word, 0) - self.d, 0) / total + self.d * len(c) / total * p
        return p

    def _total(self, k: int, h: tuple, c: Counter) -> int:
        key = (k, h)
        if key not in self._totals:
            self._totals[key] = sum(c.values())
        return self._totals[key]

    def perplexity(self, text: str) -> float:
        ws = [w if w in self.vocab else self.UNK for w in self._tokens(text)]
        seq = [self.BOS] * (self.n - 1) + ws + [self.EOS]
        nll = -sum(math.log(self.prob(seq[i], seq[:i])) for i in range(self.n - 1, len(seq)))
        return math.exp(nll / (len(seq) - self.n + 1))
