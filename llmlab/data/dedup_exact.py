"""Exact deduplication: hash of the normalised text (case-folded, whitespace and punctuation removed),
so copies that differ only in spacing, case or punctuation collapse to the first one seen."""
from __future__ import annotations

import hashlib
import re
import unicodedata

_STRIP = re.compile(r"[\W_]+")


def dedup_key(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).casefold()
    return hashlib.sha1(_STRIP.sub("", t).encode("utf-8")).hexdigest()


class ExactDeduper:
    """`is_duplicate(text)` is True for the second and later copies of a normalised text."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def is_duplicate(self, text: str) -> bool:
        k = dedup_key(text)
        if k in self.seen:
            return True
        self.seen.add(k)
        return False
