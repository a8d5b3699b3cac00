"""fastText subwords (Bojanowski et al. 2017): a word is represented by its own vector plus the
vectors of its character n-grams, min_n..max_n characters of "<word>" ('<' and '>' mark the
boundaries), each hashed into one of `bucket` rows with fastText's 32-bit FNV-1a variant
(bytes are sign-extended before the xor, as fastText's `hash` casts through int8_t).
"""
from __future__ import annotations

import numpy as np


def char_ngrams(word: str, min_n: int = 3, max_n: int = 6) -> list[str]:
    """fastText's n-grams of '<word>', shortest first ("hello", 3, 3 -> <he hel ell llo lo>)."""
    ext = f"<{word}>"
    return [ext[i:i + n] for n in range(min_n, min(len(ext), max_n) + 1) for i in range(len(ext) - n + 1)
            if not (n == 1 and (i == 0 or i == len(ext) - 1))]


def ft_hash(data: bytes) -> int:
    """fastText's Dictionary::hash: FNV-1a over sign-extended bytes, 32 bits."""
    h = 2166136261
    for b in data:
        h ^= (b - 256 if b >= 128 else b) & 0xFFFFFFFF
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def ngram_buckets(word: str, min_n: int, max_n: int, bucket: int) -> list[int]:
    """Bucket ids of the word's n-grams, in fastText's order (by start character, then length)."""
    ext = f"<{word}>"
    out = []
    for i in range(len(ext)):
        for n in range(1, max_n + 1):
            if i + n > len(ext):
                break
            if n >= min_n and not (n == 1 and (i == 0 or i + n == len(ext))):
                out.append(ft_hash(ext[i:i + n].encode("utf-8")) % bucket)
    return out


def subword_rows(words: list[str], min_n: int, max_n: int, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR table of every word's input rows: the word's own row (its index) then V + bucket id of
    each n-gram. Returns (starts int64 [V+1], rows int32)."""
    from llmlab.embed import kernel

    v = len(words)
    per_word: list[np.ndarray] = []
    lib = kernel.load()
    cap = 4096
    buf = np.empty(cap, dtype=np.uint32)
    for w in words:
        if bucket <= 0 or max_n < min_n:
            ids = np.empty(0, dtype=np.int64)
        elif lib is not None:
            b = f"<{w}>".encode("utf-8")
            n = lib.llmlab_ft_ngrams(b, len(b), min_n, max_n, bucket, buf.ctypes.data, cap)
            if n > cap:  # very long word: the Python path
                ids = np.array(ngram_buckets(w, min_n, max_n, bucket), dtype=np.int64)
            else:
                ids = buf[:n].astype(np.int64)
        else:
            ids = np.array(ngram_buckets(w, min_n, max_n, bucket), dtype=np.int64)
        per_word.append(ids)
    starts = np.zeros(v + 1, dtype=np.int64)
    np.cumsum([1 + len(x) for x in per_word], out=starts[1:])
    rows = np.empty(int(starts[-1]), dtype=np.int32)
    for i, ids in enumerate(per_word):
        rows[starts[i]] = i
        rows[starts[i] + 1:starts[i + 1]] = ids + v
    return starts, rows
