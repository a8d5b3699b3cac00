"""Character-level BPE with an end-of-word marker (Sennrich, Haddow & Birch 2016, "Neural Machine
Translation of Rare Words with Subword Units", Algorithm 1).

A word is a sequence of characters whose last one carries the marker `</w>`, so "est</w>" (a
word ending) and "est" (inside a word) are different symbols. Training repeatedly merges the most
frequent adjacent pair; encoding replays the merges in the order they were learned.

Tie-break (stated because the notes' example depends on it): highest count first, then the
lexicographically smallest pair (left string, then right string). On the notes' example
`aaabdaaabac`, after aa -> Z the pairs `Za` and `ab` both occur twice; ("a", "b") < ("aa", "a"),
so `ab` is merged, reproducing the notes' ZYdZYac -> XdXac.

This is the textbook algorithm (recount all pairs of all unique words per merge); the fast,
incremental version is `train_bpe.learn_merges`.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from llmlab.errors import UserError

EOW = "</w>"


def word_symbols(word: str, eow: str = EOW) -> tuple[str, ...]:
    return tuple(word[:-1]) + (word[-1] + eow,) if word else ()


def _apply(symbols: tuple[str, ...], a: str, b: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


class CharBPE:
    def __init__(self, merges: list[tuple[str, str]], eow: str = EOW):
        self.merges = list(merges)
        self.eow = eow
        self.rank = {m: i for i, m in enumerate(self.merges)}

    @classmethod
    def train(cls, text: str, num_merges: int, min_frequency: int = 2, eow: str = EOW,
              log: list[int] | None = None) -> "CharBPE":
        """Learn merges from whitespace-separated words. `log` receives the symbol count per step."""
        words = Counter(text.split())
        if not words:
            raise UserError("char BPE: training text is empty")
        state = {word_symbols(w, eow): c for w, c in words.items()}
        merges: list[tuple[str, str]] = []
        while len(merges) < num_merges:
            if log is not None:
                log.append(sum(len(s) * c for s, c in state.items()))
            pairs: Counter = Counter()
            for s, c in state.items():
                for p in zip(s, s[1:]):
                    pairs[p] += c
            if not pairs:
                break
            (a, b), n = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
            if n < min_frequency:
                break
            merges.append((a, b))
            state = {_apply(s, a, b): c for s, c in state.items()}
        return cls(merges, eow)

    def encode_word(self, word: str) -> list[str]:
        """Merge the adjacent pair with the lowest rank until none is a learned merge."""
        s = list(word_symbols(word, self.eow))
        while len(s) > 1:
            i = min(range(len(s) - 1), key=lambda j: self.rank.get((s[j], s[j + 1]), 1 << 60))
            if (s[i], s[i + 1]) not in self.rank:
                break
            s[i:i + 2] = [s[i] + s[i + 1]]
        return s

    def encode(self, text: str) -> list[str]:
        return [t for w in text.split() for t in self.encode_word(w)]

    def decode(self, symbols: list[str]) -> str:
        return "".join(symbols).replace(self.eow, " ").rstrip(" ")

    def save(self, path: str | Path) -> None:
        _write_json(path, "char_bpe", eow=self.eow, merges=self.merges)

    @classmethod
    def load(cls, path: str | Path) -> "CharBPE":
        data = _read_json(path, "char_bpe")
        return cls([tuple(m) for m in data["merges"]], data["eow"])


def _write_json(path: str | Path, kind: str, **fields) -> None:
    """A teaching tokenizer's file: {"type": kind, **fields} as UTF-8 JSON (read back by _read_json)."""
    from llmlab.checkpoint import atomic_write_text
    atomic_write_text(path, json.dumps({"type": kind, **fields}, ensure_ascii=False))


def _read_json(path: str | Path, kind: str) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {kind} tokenizer {p}: {e}") from None
    if not isinstance(data, dict) or data.get("type") != kind:
        raise UserError(f"{p}: not a {kind} tokenizer file")
    return data
