"""Train/validation split by whole document.

A document goes to validation when a seeded hash of its text falls below `val_fraction`, so the
split never cuts a document (its lines all go the same way), does not depend on document order
or on how many documents come before it, and is reproducible for a given seed. Splitting after
exact and near dedup keeps copies of one text from landing on both sides.
"""
from __future__ import annotations

import hashlib


def is_val(text: str, val_fraction: float, seed: int = 0) -> bool:
    if val_fraction <= 0:
        return False
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction
