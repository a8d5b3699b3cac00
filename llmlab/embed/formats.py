"""word2vec's text and binary vector formats (fastText's .vec is the text format).

Text: a header line "<count> <dim>", then one line per word: the word and dim decimal numbers,
space-separated. Binary (word2vec.c): the same header, then per word the UTF-8 word, a space and
dim little-endian float32 values, then "\n" (gensim omits the newline; both are read).
Loading is strict: a wrong count, a short or non-numeric line is an error naming the line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from llmlab.checkpoint import atomic_file
from llmlab.embed.vectors import WordVectors
from llmlab.errors import UserError


def is_binary(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".bin"


def save(kv: WordVectors, path: str | Path, binary: bool | None = None) -> Path:
    """Write `kv` (binary if the name ends in .bin, unless `binary` says otherwise); atomic."""
    p = Path(path)
    binary = is_binary(p) if binary is None else binary
    for w in kv.words:
        if not w or any(c.isspace() for c in w):
            raise UserError(f"cannot save word {w!r}: words in word2vec files may not contain whitespace")
    with atomic_file(p, "wb") as f:
        f.write(f"{len(kv)} {kv.vector_size}\n".encode())
        if binary:
            vecs = kv.vectors.astype("<f4")
            for w, row in zip(kv.words, vecs):
                f.write(w.encode("utf-8") + b" " + row.tobytes() + b"\n")
        else:
            for w, row in zip(kv.words, kv.vectors):
                f.write((w + " " + " ".join(f"{x:.6g}" for x in row.tolist()) + "\n").encode("utf-8"))
    return p


def _header(line: bytes, p: Path) -> tuple[int, int]:
    parts = line.split()
    if len(parts) != 2 or not all(x.isdigit() for x in parts):
        raise UserError(f"{p}: line 1: expected the header '<count> <dim>', got {line[:60]!r}")
    n, d = int(parts[0]), int(parts[1])
    if d <= 0:
        raise UserError(f"{p}: line 1: dimension must be positive, got {d}")
    return n, d


def load(path: str | Path, binary: bool | None = None) -> WordVectors:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"vector file not found: {p}")
    binary = is_binary(p) if binary is None else binary
    with open(p, "rb") as f:
        n, d = _header(f.readline(), p)
        words: list[str] = []
        vecs = np.empty((n, d), dtype=np.float32)
        for i in range(n):
            lineno = i + 2
            if binary:
                word = bytearray()
                while True:
                    c = f.read(1)
                    if not c:
                        raise UserError(f"{p}: entry {i + 1} (after line 1): file ends early; header said {n} words")
                    if c == b" ":
                        break
                    if c != b"\n" or word:
                        word += c
                raw = f.read(4 * d)
                if len(raw) != 4 * d:
                    raise UserError(f"{p}: entry {i + 1}: file ends inside the vector of {bytes(word)[:40]!r}")
                vecs[i] = np.frombuffer(raw, dtype="<f4")
                text = bytes(word)
            else:
                line = f.readline()
                if not line:
                    raise UserError(f"{p}: line {lineno}: file ends early; header said {n} words")
                parts = line.rstrip(b"\r\n").rstrip(b" ").split(b" ")
                if len(parts) != d + 1:
                    raise UserError(f"{p}: line {lineno}: expected a word and {d} numbers, got {len(parts) - 1} fields")
                try:
                    vecs[i] = np.array([float(x) for x in parts[1:]], dtype=np.float32)
                except ValueError:
                    raise UserError(f"{p}: line {lineno}: a value is not a number") from None
                text = parts[0]
            try:
                words.append(text.decode("utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"{p}: line {lineno}: the word is not valid UTF-8") from None
        if not binary and f.readline().strip():
            raise UserError(f"{p}: line {n + 2}: more lines than the header's {n} words")
    if len(set(words)) != len(words):
        raise UserError(f"{p}: a word occurs twice")
    return WordVectors(words, vecs)
