"""Trained word vectors: lookup by word (fastText: out-of-vocabulary words from their n-grams),
cosine nearest neighbours and 3CosAdd queries."""
from __future__ import annotations

import numpy as np

from llmlab.errors import UserError


class WordVectors:
    def __init__(self, words: list[str], vectors: np.ndarray, counts=None):
        if len(words) != len(vectors):
            raise ValueError(f"{len(words)} words but {len(vectors)} vectors")
        self.words = list(words)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.counts = None if counts is None else np.asarray(counts)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.ngrams: np.ndarray | None = None  # fastText bucket rows
        self.min_n = self.max_n = self.bucket = 0
        self._unit: np.ndarray | None = None

    @classmethod
    def from_fasttext(cls, words, word_rows, ngram_rows, sub_start, sub_idx, min_n, max_n, bucket, counts=None):
        """A word's vector is the mean of its own row and its n-gram rows (as fastText and gensim)."""
        import scipy.sparse as sp

        v = len(words)
        n = np.diff(sub_start)
        mean = sp.csr_matrix((np.repeat(1.0 / n, n).astype(np.float32), sub_idx, sub_start),
                             shape=(v, v + len(ngram_rows)))
        kv = cls(words, mean[:, :v] @ word_rows + mean[:, v:] @ ngram_rows, counts)
        kv.ngrams, kv.min_n, kv.max_n, kv.bucket = ngram_rows, min_n, max_n, bucket
        return kv

    @property
    def vector_size(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index or (self.ngrams is not None and bool(self._buckets(word)))

    def _buckets(self, word: str) -> list[int]:
        from llmlab.embed.subwords import ngram_buckets

        return ngram_buckets(word, self.min_n, self.max_n, self.bucket) if self.bucket else []

    def vector(self, word: str) -> np.ndarray:
        """The word's vector; fastText: an unknown word gets the mean of its n-gram rows."""
        i = self.index.get(word)
        if i is not None:
            return self.vectors[i]
        if self.ngrams is not None:
            b = self._buckets(word)
            if b:
                return self.ngrams[b].mean(0)
        raise UserError(f"word {word!r} is not in the vocabulary ({len(self)} words)"
                        + ("" if self.ngrams is None else " and has no n-grams"))

    def unit(self) -> np.ndarray:
        if self._unit is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._unit = self.vectors / np.maximum(norms, 1e-12)
        return self._unit

    def most_similar(self, positive: list[str], negative: list[str] = (), topn: int = 10,
                     restrict: int = 0) -> list[tuple[str, float]]:
        """Cosine neighbours of mean(unit(positive)) - mean... as gensim's most_similar (3CosAdd):
        the query is the mean of the unit vectors, with negatives subtracted; inputs are excluded."""
        def u(w):
            x = self.vector(w)
            return x / max(float(np.linalg.norm(x)), 1e-12)
        terms = [u(w) for w in positive] + [-u(w) for w in negative]
        if not terms:
            raise UserError("no query words given")
        q = np.mean(terms, axis=0)
        q /= max(float(np.linalg.norm(q)), 1e-12)
        mat = self.unit()[:restrict] if restrict else self.unit()
        sims = mat @ q
        exclude = {self.index[w] for w in list(positive) + list(negative) if w in self.index}
        k = min(len(sims), topn + len(exclude))
        top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.words[i], float(sims[i])) for i in top if i not in exclude][:topn]
