"""Sentence-level dedup (d003 sec. 2.3; Holtzman et al. 2020 on degenerate repetition):

- a sentence whose own words repeat an n-gram (default: a 3-gram 3 times, "the cat sat the cat
  sat the cat sat") is dropped: such loops teach the model to loop;
- a sentence seen before in the corpus (case- and space-normalised, >= min_chars) is dropped,
  so boilerplate lines repeated across documents ("All rights reserved.") are kept once.

Sentences end at . ! ? and their CJK forms, or a newline; the text is rebuilt from the kept
sentences with their original separators.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter

from llmlab.data.quality import words

_SENT = re.compile(r"[^.!?。！？\n]*(?:[.!?。！？]+|\n|$)")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENT.findall(text) if s]


def repeats_ngram(sentence: str, n: int = 3, times: int = 3) -> bool:
    ws = [w.lower() for w in words(sentence)]
    c = Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
    return bool(c) and max(c.values()) >= times


class SentenceDeduper:
    def __init__(self, n: int = 3, times: int = 3, min_chars: int = 20, cross_document: bool = True):
        self.n, self.times, self.min_chars, self.cross = n, times, min_chars, cross_document
        self.seen: set[bytes] = set()
        self.counts = Counter()

    def __call__(self, text: str) -> str:
        """`text` without its self-repeating sentences and the sentences seen in earlier text."""
        out = []
        for s in split_sentences(text):
            body = " ".join(s.split()).lower()
            if not body:
                out.append(s)
                continue
            if repeats_ngram(s, self.n, self.times):
                self.counts["repeated_ngram"] += 1
                continue
            if self.cross and len(body) >= self.min_chars:
                key = hashlib.blake2b(body.encode("utf-8"), digest_size=8).digest()
                if key in self.seen:
                    self.counts["seen_before"] += 1
                    continue
                self.seen.add(key)
            out.append(s)
        return "".join(out).strip()
