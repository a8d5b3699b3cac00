"""Test-set contamination: word n-gram overlap between eval items and a training corpus.

Following GPT-3 (Brown et al. 2020, App. C) an item counts as contaminated when any of its
n-grams occurs in the training corpus; items shorter than n tokens cannot match. Tokens are
lowercased words, except that every CJK character is a token of its own (Chinese has no
spaces), default n = 13. The corpus -- plain text (one document a line) or the `train.jsonl`
of `llmlab data build` (one {"text": ...} document a line) -- is streamed, and only 8-byte
hashes of its n-grams are kept, so ~10^8 words fit in memory.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from llmlab.errors import UserError

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _h(gram: Sequence[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest(), "little")


def _grams(ws: list[str], n: int) -> Iterable[list[str]]:
    for i in range(len(ws) - n + 1):
        yield ws[i:i + n]


class NgramIndex:
    def __init__(self, n: int = 13):
        self.n = n
        self.hashes: set[int] = set()

    def add_text(self, text: str) -> None:
        ws = words(text)
        for i in range(max(len(ws) - self.n + 1, 0)):
            self.hashes.add(_h(ws[i:i + self.n]))

    @classmethod
    def from_file(cls, path: str | Path, n: int = 13) -> "NgramIndex":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"contamination corpus not found: {p}")
        idx = cls(n)
        jsonl = p.name.endswith(".jsonl")
        with open(p, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if jsonl:  # `llmlab data build` output: one {"text": ...} document per line
                    try:
                        line = json.loads(line).get("text", "") if line.strip() else ""
                    except (json.JSONDecodeError, AttributeError):
                        raise UserError(f"{p}:{lineno}: expected a JSON object with a 'text' field") from None
                idx.add_text(line)
        return idx

    def overlap(self, text: str) -> tuple[int, int]:
        """-> (#item n-grams found in the corpus, #item n-grams)."""
        grams = list(_grams(words(text), self.n))
        return sum(_h(g) in self.hashes for g in grams), len(grams)


def contamination(index: NgramIndex, texts: Sequence[str]) -> dict:
    """Share of items with any overlapping n-gram, and share of all item n-grams that overlap."""
    hit_items = hit = total = 0
    for t in texts:
        h, n = index.overlap(t)
        hit_items += h > 0
        hit += h
        total += n
    return {"ngram": index.n, "items": len(texts), "contaminated_items": hit_items,
            "contaminated_frac": hit_items / max(len(texts), 1), "ngram_overlap": hit / max(total, 1)}
