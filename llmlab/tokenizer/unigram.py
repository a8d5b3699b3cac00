"""Unigram language-model tokenizer (Kudo 2018, "Subword Regularization"; SentencePiece's unigram).

A word's probability is the sum over its segmentations x of prod_i p(x_i). Training:

1. seed vocabulary: every substring (up to `max_piece_len` chars) seen at least twice, plus all
   characters, keeping the `seed_size` most frequent by count x length;
2. EM: the E-step runs forward-backward over each word's lattice to get the expected count of
   every piece; the M-step sets p(piece) = expected count / total;
3. pruning: a piece's loss is how much the corpus log-likelihood drops without it, approximated
   as expected_count x (log p(piece) - log p(best segmentation of the piece without it));
   keep the `shrink` fraction with the highest loss (never single characters), repeat 2-3 until
   `vocab_size` pieces remain.

Encoding is Viterbi: the single most probable segmentation. Words are SentencePiece style: the
text is split on whitespace and each word starts with "▁" (U+2581), so decoding restores spaces.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from llmlab.errors import UserError
from llmlab.tokenizer.char_bpe import _read_json, _write_json

SPACE = "\u2581"


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


class Unigram:
    def __init__(self, pieces: dict[str, float], unk_token: str = "<unk>"):
        """pieces: piece -> log probability, in id order (id 0 is the unknown token)."""
        self.unk_token = unk_token
        self.pieces = {unk_token: 0.0}
        self.pieces.update((p, s) for p, s in pieces.items() if p != unk_token)
        self.vocab = list(self.pieces)
        self.ids = {p: i for i, p in enumerate(self.vocab)}
        self.max_len = max(len(p) for p in self.pieces)
        self.min_score = min(s for p, s in self.pieces.items() if p != unk_token) if len(self.pieces) > 1 else 0.0

    # ---- segmentation -----------------------------------------------------------------------
    def viterbi(self, word: str, exclude: str | None = None) -> tuple[float, list[str]]:
        """Most probable segmentation of `word` (unknown characters -> unk with a -10 penalty)."""
        n = len(word)
        best = [0.0] + [-math.inf] * n
        back = [0] * (n + 1)
        for end in range(1, n + 1):
            for start in range(max(0, end - self.max_len), end):
                piece = word[start:end]
                lp = self.pieces.get(piece) if piece != exclude else None
                if piece == self.unk_token:
                    lp = None
                if lp is None and end - start == 1:
                    lp = self.min_score - 10.0  # HF/SentencePiece unknown-character penalty
                if lp is not None and best[start] + lp > best[end]:
                    best[end] = best[start] + lp
                    back[end] = start
        out, end = [], n
        while end > 0:
            out.append(word[back[end]:end])
            end = back[end]
        return best[n], out[::-1]

    def tokenize(self, text: str) -> list[str]:
        return [p for w in text.split() for p in self.viterbi(SPACE + w)[1]]

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(p, 0) for p in self.tokenize(text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids).replace(SPACE, " ").lstrip(" ")

    # ---- training -----------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, max_piece_len: int = 8, seed_size: int | None = None,
              shrink: float = 0.75, em_iters: int = 2, unk_token: str = "<unk>") -> "Unigram":
        words = Counter(SPACE + w for w in text.split())
        if not words:
            raise UserError("Unigram: training text is empty")
        chars = {ch for w in words for ch in w}
        if vocab_size < len(chars) + 1:
            raise UserError(f"Unigram: vocab_size={vocab_size} is smaller than the alphabet + unk ({len(chars) + 1})")
        subs: Counter = Counter()
        for w, c in words.items():
            for i in range(len(w)):
                for j in range(i + 2, min(len(w), i + max_piece_len) + 1):
                    subs[w[i:j]] += c
        seed_size = seed_size or 10 * vocab_size
        seed = [s for s, c in sorted(subs.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0])) if c >= 2][:seed_size]
        counts = {ch: sum(w.count(ch) * c for w, c in words.items()) for ch in sorted(chars)}
        counts.update((s, subs[s]) for s in seed)
        model = cls(_normalize(counts), unk_token)
        while True:
            for _ in range(em_iters):
                expected = model._expected_counts(words)
                expected.update({ch: max(expected.get(ch, 0.0), 1e-3) for ch in chars})  # chars never vanish
                model = cls(_normalize({p: c for p, c in expected.items() if c > 0}), unk_token)
            n = len(model.pieces) - 1
            if n + 1 <= vocab_size:
                return model
            target = max(vocab_size - 1, int(n * shrink))
            model = cls(_normalize(model._prune(expected, target, chars)), unk_token)

    def _expected_counts(self, words: Counter) -> dict[str, float]:
        """E-step: forward-backward over each word's lattice of vocabulary pieces."""
        exp: dict[str, float] = {}
        for w, c in words.items():
            n = len(w)
            arcs = [(s, e, w[s:e], self.pieces[w[s:e]]) for e in range(1, n + 1)
                    for s in range(max(0, e - self.max_len), e) if w[s:e] in self.pieces and w[s:e] != self.unk_token]
            alpha = [0.0] + [-math.inf] * n
            for s, e, _, lp in arcs:  # arcs are sorted by end, so alpha[s] is final when used
                alpha[e] = _logsumexp(alpha[e], alpha[s] + lp)
            beta = [-math.inf] * n + [0.0]
            for s, e, _, lp in sorted(arcs, key=lambda a: -a[0]):
                beta[s] = _logsumexp(beta[s], beta[e] + lp)
            z = alpha[n]
            if z == -math.inf:
                continue
            for s, e, p, lp in arcs:
                post = math.exp(alpha[s] + lp + beta[e] - z)
                if post > 0:
                    exp[p] = exp.get(p, 0.0) + c * post
        return exp

    def _prune(self, expected: dict[str, float], target: int, chars: set[str]) -> dict[str, float]:
        loss = {}
        for p, lp in self.pieces.items():
            if p == self.unk_token or p in chars:
                continue
            alt, _ = self.viterbi(p, exclude=p)
            loss[p] = expected.get(p, 0.0) * (lp - alt)
        keep = sorted(loss, key=lambda p: (-loss[p], p))[:max(0, target - len(chars))]
        return {p: expected.get(p, 1e-3) for p in list(chars) + keep}

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        _write_json(path, "unigram", unk_token=self.unk_token, pieces=[[p, s] for p, s in self.pieces.items()])

    @classmethod
    def load(cls, path: str | Path) -> "Unigram":
        data = _read_json(path, "unigram")
        return cls({p: s for p, s in data["pieces"]}, data["unk_token"])


def _normalize(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {p: math.log(c / total) for p, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
