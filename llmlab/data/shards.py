"""Token shards: tokenised documents packed into flat binary files, memory-mapped for reading.

Layout of a shard directory:
  shard_00000.bin    the token ids, little-endian uint16 (vocab <= 65536) or uint32
  shard_00000.json   its header: {"format": "llmlab-tokens", "version": 1, "dtype", "num_tokens",
                     "num_docs", "num_bytes" (UTF-8 bytes of the documents, for bits-per-byte),
                     "doc_starts": [offsets of each document's first token], "vocab_size", "eos_id"}
  index.json         the shard list and totals (written last: its presence means "complete")

Each document is followed by the EOS token (when the tokenizer has one), so a model learns where
documents end; documents never straddle shards. Every file is written to a temporary name, synced,
then renamed (atomic on POSIX), so a crash never leaves a half-written shard behind a valid header.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from llmlab.checkpoint import atomic_write_bytes, atomic_write_text
from llmlab.errors import UserError

FORMAT = "llmlab-tokens"
VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, so any vocab of at most 65536 entries; else uint32."""
    if vocab_size <= 0:
        raise UserError(f"tokenizer vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def _atomic_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def write_shards(texts: Iterable[str], tokenizer, out_dir: str | Path, shard_tokens: int = 1 << 24,
                 append_eos: bool = True, source: str = "") -> dict:
    """Tokenise `texts` with `tokenizer.encode` and write shards of about `shard_tokens` tokens.

    Returns the index dict. Raises UserError if no tokens were produced (naming `source`, the input,
    when given, else `out_dir`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = int(tokenizer.vocab_size)
    dtype = token_dtype(vocab)
    eos = getattr(tokenizer, "eos_id", None) if append_eos else None
    shards: list[dict] = []
    buf: list[np.ndarray] = []
    starts: list[int] = []
    n_buf = 0
    n_bytes = 0

    def flush() -> None:
        nonlocal buf, starts, n_buf, n_bytes
        if n_buf == 0:
            return
        name = f"shard_{len(shards):05d}"
        arr = np.concatenate(buf).astype(dtype, copy=False)
        atomic_write_bytes(out / f"{name}.bin", arr.tobytes())
        header = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "num_tokens": int(arr.size),
                  "num_docs": len(starts), "num_bytes": n_bytes, "doc_starts": starts, "vocab_size": vocab, "eos_id": eos}
        _atomic_json(out / f"{name}.json", header)
        shards.append({"name": name, "num_tokens": int(arr.size), "num_docs": len(starts), "num_bytes": n_bytes})
        buf, starts, n_buf, n_bytes = [], [], 0, 0

    for text in texts:
        ids = list(tokenizer.encode(text))
        if eos is not None:
            ids.append(eos)
        if not ids:
            continue
        a = np.asarray(ids, dtype=np.int64)
        if a.min() < 0 or a.max() >= vocab:
            raise UserError(f"tokenizer produced id {int(a.max()) if a.max() >= vocab else int(a.min())} "
                            f"outside [0, vocab_size={vocab})")
        if n_buf and n_buf + a.size > shard_tokens:
            flush()
        starts.append(n_buf)
        buf.append(a)
        n_buf += a.size
        n_bytes += len(text.encode("utf-8"))
    flush()
    if not shards:
        raise UserError(f"{source}: no documents to tokenize" if source else
                        f"no tokens to write to {out}: the input had no non-empty documents")
    index = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "vocab_size": vocab, "eos_id": eos,
             "num_tokens": sum(s["num_tokens"] for s in shards), "num_docs": sum(s["num_docs"] for s in shards),
             "num_bytes": sum(s["num_bytes"] for s in shards), "shards": shards}
    _atomic_json(out / "index.json", index)
    return index


@dataclass
class Shard:
    name: str
    header: dict
    tokens: np.ndarray  # read-only memmap

    @property
    def doc_starts(self) -> list[int]:
        return self.header["doc_starts"]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"shard file missing: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt shard header {path}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"corrupt shard header {path}: not an {FORMAT} file")
    if obj.get("version") != VERSION:
        raise UserError(f"shard header {path}: unsupported version {obj.get('version')!r}")
    return obj


def open_shards(shard_dir: str | Path) -> list[Shard]:
    """Validate the index and every header against its .bin file; memory-map the tokens."""
    d = Path(shard_dir)
    if not d.is_dir():
        raise UserError(f"shard directory not found: {d}")
    index = _read_json(d / "index.json")
    if not isinstance(index.get("shards"), list) or not index["shards"]:
        raise UserError(f"shard index {d / 'index.json'} lists no shards")
    out = []
    for entry in index["shards"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise UserError(f"corrupt shard index {d / 'index.json'}: bad entry {entry!r}")
        h = _read_json(d / f"{name}.json")
        try:
            dtype = np.dtype(h["dtype"])
            n = int(h["num_tokens"])
            starts = h["doc_starts"]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"corrupt shard header {d / (name + '.json')}: {e}") from None
        if dtype not in (np.dtype("<u2"), np.dtype("<u4")):
            raise UserError(f"corrupt shard header {d / (name + '.json')}: dtype {h['dtype']!r}")
        if n <= 0:
            raise UserError(f"empty shard {d / (name + '.bin')}: num_tokens = {n}")
        binp = d / f"{name}.bin"
        size = binp.stat().st_size if binp.is_file() else -1
        if size != n * dtype.itemsize:
            raise UserError(f"shard {binp} has {size} bytes, header says {n} tokens x {dtype.itemsize} bytes "
                            "(truncated or mismatched)")
        if not isinstance(starts, list) or (starts and (starts[0] != 0 or starts[-1] >= n)):
            raise UserError(f"corrupt shard header {d / (name + '.json')}: bad doc_starts")
        out.append(Shard(name, h, np.memmap(binp, dtype=dtype, mode="r", shape=(n,))))
    return out
