"""WordPiece (Schuster & Nakajima 2012; Wu et al. 2016, the BERT vocabulary).

Training grows the vocabulary like BPE but picks the pair that most increases the unigram
likelihood of the corpus: score(a, b) = count(ab) / (count(a) * count(b)) (the notes' "merged
probability over the pre-merge probabilities"; the corpus size cancels). Rare parts that always
occur together score high even when a frequent pair has a larger raw count. Non-initial pieces
carry the continuation prefix `##`. Ties: higher score, then higher pair count, then the
lexicographically smallest pair.

Encoding is greedy longest-match-first inside each word (BERT's `WordpieceTokenizer`): take the
longest vocabulary entry that prefixes the rest of the word (with `##` after the first piece); if
some position has no match, the whole word becomes `[UNK]`.

Training recounts the pairs of all unique words per merge (the notes' O(K^2)-style cost); fine for
the small vocabularies this demo trains.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import regex

from llmlab.errors import UserError
from llmlab.tokenizer.char_bpe import _read_json, _write_json

PRE = regex.compile(r"\w+|[^\w\s]+")  # = HF tokenizers' `Whitespace` pre-tokenizer
PREFIX = "##"


def _join(a: str, b: str) -> str:
    return a + b[len(PREFIX):] if b.startswith(PREFIX) else a + b


class WordPiece:
    def __init__(self, vocab: list[str], unk_token: str = "[UNK]", max_chars: int = 100):
        self.vocab = list(vocab)
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.unk_token = unk_token
        self.max_chars = max_chars

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: tuple[str, ...] = ("[UNK]",)) -> "WordPiece":
        words = Counter(PRE.findall(text))
        if not words:
            raise UserError("WordPiece: training text is empty")
        state = {tuple([w[0]] + [PREFIX + ch for ch in w[1:]]): c for w, c in words.items()}
        alphabet = sorted({s for seq in state for s in seq})
        vocab = list(special_tokens) + alphabet
        if vocab_size < len(vocab):
            raise UserError(f"WordPiece: vocab_size={vocab_size} is smaller than specials + alphabet ({len(vocab)})")
        while len(vocab) < vocab_size:
            pairs: Counter = Counter()
            units: Counter = Counter()
            for seq, c in state.items():
                for s in seq:
                    units[s] += c
                for p in zip(seq, seq[1:]):
                    pairs[p] += c
            if not pairs:
                break
            (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1] / (units[kv[0][0]] * units[kv[0][1]]),
                                                           -kv[1], kv[0]))
            new = _join(a, b)
            if new not in vocab:
                vocab.append(new)
            state = {_merge(seq, a, b, new): c for seq, c in state.items()}
        return cls(vocab, special_tokens[0] if special_tokens else "[UNK]")

    def encode_word(self, word: str) -> list[str]:
        if len(word) > self.max_chars:
            return [self.unk_token]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:  # longest match first
                piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                if piece in self.ids:
                    break
                end -= 1
            if end == start:
                return [self.unk_token]
            out.append(piece)
            start = end
        return out

    def tokenize(self, text: str) -> list[str]:
        return [p for w in PRE.findall(text) for p in self.encode_word(w)]

    def encode(self, text: str) -> list[int]:
        return [self.ids[p] for p in self.tokenize(text)]

    def decode(self, ids: list[int]) -> str:
        out = ""
        for i in ids:
            t = self.vocab[i]
            out += t[len(PREFIX):] if t.startswith(PREFIX) else (" " + t if out else t)
        return out

    def save(self, path: str | Path) -> None:
        _write_json(path, "wordpiece", unk_token=self.unk_token, vocab=self.vocab)

    @classmethod
    def load(cls, path: str | Path) -> "WordPiece":
        data = _read_json(path, "wordpiece")
        return cls(data["vocab"], data["unk_token"])


def _merge(seq: tuple[str, ...], a: str, b: str, new: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)
