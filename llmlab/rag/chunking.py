"""Chunking: cut a document into retrievable pieces. Every chunk is an exact substring of the
document (`text[start:end]`), so a citation can point back into the source.

  fixed      windows of `size` characters, each starting `size - overlap` after the previous
  sentence   whole sentences packed up to `size` characters (a longer sentence is cut fixed)
  recursive  split on the first separator ("\\n\\n", "\\n", ". ", " ", "") that yields pieces, recurse
             into pieces still over `size`, then merge neighbours up to `size` (the LangChain
             RecursiveCharacterTextSplitter idea)
  tokens     whitespace-delimited words packed up to `size` tokens of a tokenizer (default: the
             sentence encoder's WordPiece, so a chunk fits its 256-token window), `overlap` tokens shared
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from llmlab.errors import UserError

STRATEGIES = ("fixed", "sentence", "recursive", "tokens")
SEPARATORS = ("\n\n", "\n", ". ", " ", "")
_SENT_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])")


@dataclass
class Chunk:
    text: str
    start: int
    end: int


def _check(size: int, overlap: int) -> None:
    if size <= 0:
        raise UserError(f"chunk_size must be > 0, got {size}")
    if not 0 <= overlap < size:
        raise UserError(f"chunk_overlap must be in [0, chunk_size={size}), got {overlap}")


def _spans_to_chunks(text: str, spans: list[tuple[int, int]]) -> list[Chunk]:
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():  # trim, keeping offsets exact
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append(Chunk(text[s:e], s, e))
    return out


def fixed(text: str, size: int, overlap: int = 0) -> list[Chunk]:
    _check(size, overlap)
    step = size - overlap
    spans = [(s, min(s + size, len(text))) for s in range(0, max(len(text) - overlap, 1), step)]
    return _spans_to_chunks(text, spans)


def _pack(text: str, pieces: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Merge consecutive spans while the merged span (trimmed) stays within `size` characters."""
    out: list[tuple[int, int]] = []
    for s, e in pieces:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e == s:
            continue
        if out and e - out[-1][0] <= size:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def sentences(text: str) -> list[tuple[int, int]]:
    spans, s = [], 0
    for m in _SENT_END.finditer(text):
        if m.end() > s:
            spans.append((s, m.start() if m.start() > s else m.end()))
            s = m.end()
    if s < len(text):
        spans.append((s, len(text)))
    return [(a, b) for a, b in spans if b > a]


def sentence(text: str, size: int) -> list[Chunk]:
    _check(size, 0)
    pieces = []
    for s, e in sentences(text):
        pieces += [(a, min(a + size, e)) for a in range(s, e, size)] if e - s > size else [(s, e)]
    return _spans_to_chunks(text, _pack(text, pieces, size))


def _split(text: str, s: int, e: int, size: int, seps: tuple[str, ...]) -> list[tuple[int, int]]:
    if e - s <= size:
        return [(s, e)]
    for i, sep in enumerate(seps):
        if sep == "":
            return [(a, min(a + size, e)) for a in range(s, e, size)]
        cuts, a = [], s
        while True:
            j = text.find(sep, a, e)
            if j < 0:
                break
            cuts.append((a, j + len(sep)))  # the separator stays with the left piece
            a = j + len(sep)
        if not cuts:
            continue
        cuts.append((a, e))
        out = []
        for a, b in cuts:
            out += _split(text, a, b, size, seps[i + 1:])
        return out
    return [(s, e)]


def recursive(text: str, size: int, separators: tuple[str, ...] = SEPARATORS) -> list[Chunk]:
    _check(size, 0)
    return _spans_to_chunks(text, _pack(text, _split(text, 0, len(text), size, tuple(separators)), size))


def tokens(text: str, size: int, overlap: int, count: Callable[[str], int]) -> list[Chunk]:
    """Pack words up to `size` tokens (count(word) tokens each); `overlap` tokens of words repeat."""
    _check(size, overlap)
    words = [(m.start(), m.end(), max(count(m.group(0)), 1)) for m in re.finditer(r"\S+", text)]
    spans, i = [], 0
    while i < len(words):
        j, n = i, 0
        while j < len(words) and (n + words[j][2] <= size or j == i):
            n += words[j][2]
            j += 1
        spans.append((words[i][0], words[j - 1][1]))
        if j >= len(words):
            break
        back, k = 0, j  # step back over `overlap` tokens of words, but always advance
        while k - 1 > i and back + words[k - 1][2] <= overlap:
            k -= 1
            back += words[k][2]
        i = k
    return _spans_to_chunks(text, spans)


def chunk(text: str, strategy: str, size: int, overlap: int = 0, count: Callable[[str], int] | None = None) -> list[Chunk]:
    if strategy == "fixed":
        return fixed(text, size, overlap)
    if strategy == "sentence":
        return sentence(text, size)
    if strategy == "recursive":
        return recursive(text, size)
    if strategy == "tokens":
        if count is None:
            raise UserError("chunking by tokens needs a tokenizer")
        return tokens(text, size, overlap, count)
    raise UserError(f"chunking: unknown strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
