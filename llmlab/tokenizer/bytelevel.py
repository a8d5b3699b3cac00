"""GPT-2's byte <-> printable-unicode table used by byte-level BPE vocab files (tokenizer.json, GGUF)."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_bytes(token: str) -> bytes:
    table = unicode_to_bytes()
    return bytes(table[c] for c in token)


def bytes_to_token(b: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[x] for x in b)
