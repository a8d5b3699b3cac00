"""Byte-level BPE training (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with
Subword Units"; byte-level variant: Radford et al. 2019, GPT-2).

The classic loop "count all adjacent pairs, merge the most frequent, repeat" rescans the corpus per
merge: O(merges x corpus). This trainer does the same merges with far less work:

1. The corpus is read once, as a stream, and split into pre-tokens by the regex; only the
   *unique* pre-tokens and their counts are kept (a word seen 10,000 times is processed once,
   weighted by 10,000).
2. Pair counts are built once. `where[pair]` indexes the words that contain the pair, so a merge
   visits only those words, and inside a word only the occurrences of the pair (`list.index`).
   Each occurrence updates the counts of its two neighbouring pairs: (x, a) and (b, y) lose the
   word's count, (x, ab) and (ab, y) gain it.
3. The best pair comes from a max-heap with lazy invalidation: an existing pair's count only ever
   goes down (pairs that gain are new pairs containing the new token), so a popped entry whose
   count is stale is pushed back with its true count, and the first fresh entry is the maximum.

Total merge work is proportional to the number of symbol occurrences removed, i.e. at most the
size of the unique-word corpus, independent of the number of merges.

Tie-break (deterministic): highest count, then the lexicographically smallest pair of byte strings
(left token's bytes, then right token's bytes).
"""
from __future__ import annotations

import heapq
import sys
from array import array
from collections import Counter
from pathlib import Path
from typing import Iterable

import regex

from llmlab.data.packages import not_utf8
from llmlab.errors import UserError
from llmlab.tokenizer.patterns import GPT2

MAX_VOCAB = 65536
_SHIFT = 17  # pair (a, b) -> a << 17 | b: int keys hash faster than tuples; ids < 2**17


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, file=sys.stderr,
                mininterval=0.5)


def count_pretokens_text(lines: Iterable[str], pattern: str = GPT2, special_tokens: Iterable[str] = (),
                         counts: Counter | None = None) -> Counter:
    """Unique pre-tokens -> count, from an iterable of text pieces (each piece is split on its own).

    Special-token strings are cut out first so they never merge into learned tokens.
    """
    counts = Counter() if counts is None else counts
    pat = regex.compile(pattern)
    specials = [s for s in special_tokens if s]
    split = regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))) \
        if specials else None
    for text in lines:
        for part in (split.split(text) if split else (text,)):
            counts.update(pat.findall(part))  # Counter.update(list) counts in C
    return counts


def iter_file_blocks(paths: Iterable[str | Path], block_bytes: int = 1 << 20, progress: bool = False):
    """Stream text files as blocks of whole lines (about `block_bytes` each); unreadable -> UserError."""
    paths = [Path(p) for p in paths]
    total = 0
    for p in paths:
        if not p.is_file():
            raise UserError(f"training file not found or not a file: {p}")
        total += p.stat().st_size
    bar = _progress(total, "reading", progress)
    try:
        for p in paths:
            try:
                with open(p, encoding="utf-8-sig", newline="") as f:  # a leading BOM is no text
                    while True:
                        block = f.read(block_bytes)
                        if not block:
                            break
                        rest = f.readline()  # finish the current line so no line is cut in two
                        block += rest
                        bar.update(len(block.encode("utf-8")))
                        yield from block.splitlines(keepends=True)
            except UnicodeDecodeError:
                raise not_utf8(p, "training file ") from None
            except OSError as e:
                raise UserError(f"cannot read training file {p}: {e}") from None
    finally:
        bar.close()


def learn_merges(counts: dict[str, int] | Counter, num_merges: int, min_frequency: int = 2,
                 progress: bool = False) -> list[tuple[bytes, bytes]]:
    # over 100 lines: one hot loop whose incremental pair counts and occurrence sets are shared state
    """Learn up to `num_merges` byte-pair merges from pre-token counts (see module docstring).

    A word is stored as bytes holding little-endian uint16 token ids, so finding a pair inside it is
    one C-level `bytes.find` of a 4-byte pattern (a hit at an odd offset straddles two ids and is
    skipped) instead of a Python loop over its symbols.
    """
    if num_merges > MAX_VOCAB - 256:
        raise UserError(f"num_merges={num_merges} exceeds the uint16 id space ({MAX_VOCAB - 256})")
    tb: list[bytes] = [bytes([i]) for i in range(256)]  # id -> bytes
    words: list[bytes] = []
    wcount: list[int] = []
    pc: dict[int, int] = {}
    where: dict[int, set[int]] = {}
    touched: set[int] = set()  # pairs whose count rose during the current merge

    def add(q: int, wi: int, c: int) -> None:
        """Pair q occurs (once more) in word wi, which appears c times: count it and index the word."""
        pc[q] = pc.get(q, 0) + c
        touched.add(q)
        s = where.get(q)
        if s is None:
            where[q] = {wi}
        else:
            s.add(wi)

    for tok, c in counts.items():
        b = tok.encode("utf-8", "surrogateescape") if isinstance(tok, str) else bytes(tok)
        if len(b) < 2:
            continue
        wi = len(words)
        arr = array("H", list(b))
        if sys.byteorder == "big":
            arr.byteswap()
        words.append(arr.tobytes())
        wcount.append(c)
        for x, y in zip(b, b[1:]):
            add(x << _SHIFT | y, wi, c)
    mask = (1 << _SHIFT) - 1
    heap = [(-c, tb[p >> _SHIFT], tb[p & mask], p) for p, c in pc.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    known = set(tb)
    bar = _progress(num_merges, "merging", progress)
    bar.unit = "merge"
    frm = int.from_bytes
    while len(merges) < num_merges and heap:
        negc, ba, bb, p = heapq.heappop(heap)
        cur = pc.get(p, 0)
        if cur != -negc:  # stale: counts only fall, so re-queue with the true count
            if cur > 0:
                heapq.heappush(heap, (-cur, ba, bb, p))
            continue
        if cur < min_frequency:
            break
        if ba + bb in known:
            # the bytes already have a token made by another pair; a second id for the same bytes
            # would break the byte-string -> id map the tiktoken fast path needs, so never merge it
            pc[p] = 0
            continue
        a, b = p >> _SHIFT, p & mask
        t = len(tb)
        tb.append(ba + bb)
        known.add(ba + bb)
        merges.append((ba, bb))
        pat = a.to_bytes(2, "little") + b.to_bytes(2, "little")
        tt = t.to_bytes(2, "little")
        touched.clear()
        for wi in where.pop(p, ()):
            w = words[wi]
            j = w.find(pat)
            while j & 1 and j > 0:  # an odd offset straddles two ids: not a real occurrence
                j = w.find(pat, j + 1)
            if j < 0:
                continue  # stale index entry: an earlier merge consumed the pair here
            c = wcount[wi]
            n = len(w)
            out = []
            last = 0  # end (in w) of the previous occurrence, 0 before the first
            while j >= 0:
                if j > 0:
                    # left neighbour: the token this merge just made, when occurrences touch
                    x = t if (j == last and out) else frm(w[j - 2:j], "little")
                    pc[x << _SHIFT | a] -= c  # (x, a) becomes (x, t)
                    add(x << _SHIFT | t, wi, c)
                if j + 4 < n:
                    y = frm(w[j + 4:j + 6], "little")
                    pc[b << _SHIFT | y] -= c  # (b, y) becomes (t, y)
                    add(t << _SHIFT | y, wi, c)
                out.append(w[last:j])
                out.append(tt)
                last = j + 4
                j = w.find(pat, last)
                while j & 1 and j > 0:
                    j = w.find(pat, j + 1)
            out.append(w[last:])
            words[wi] = b"".join(out)
        pc.pop(p, None)
        for q in touched:
            c = pc.get(q, 0)
            if c > 0:
                heapq.heappush(heap, (-c, tb[q >> _SHIFT], tb[q & mask], q))
        bar.update(1)
    bar.close()
    return merges


def check_vocab_size(vocab_size: int, special_tokens: list[str]) -> None:
    lo = 256 + len(special_tokens)
    if not (lo <= vocab_size <= MAX_VOCAB):
        raise UserError(f"vocab_size={vocab_size}: must be between {lo} (256 bytes + {len(special_tokens)} "
                        f"special tokens) and {MAX_VOCAB}")
    if len(set(special_tokens)) != len(special_tokens):
        raise UserError(f"special_tokens contains duplicates: {special_tokens}")
    if any(not s for s in special_tokens):
        raise UserError("special_tokens: empty string is not a valid special token")


def build_tokenizer(merges: list[tuple[bytes, bytes]], special_tokens: list[str], pattern: str, **kw):
    """Vocab = 256 bytes, then one token per merge (id = merge rank + 256), then the specials."""
    from llmlab.tokenizer.bpe import ByteLevelBPE

    vocab: list[bytes | None] = [bytes([i]) for i in range(256)] + [a + b for a, b in merges]
    learned = set(vocab)
    special = {}
    for s in special_tokens:
        if s.encode("utf-8") in learned:
            # the fast path maps bytes -> one id; a special equal to a learned token would be ambiguous
            raise UserError(f"special token {s!r} collides with a learned token of the same bytes; "
                            "pick a string that cannot occur in text (e.g. '<|name|>')")
        special[s] = len(vocab)
        vocab.append(None)
    return ByteLevelBPE(vocab, list(merges), special, pattern=pattern, **kw)


def train_bpe(lines: Iterable[str] | None = None, vocab_size: int = 32768, special_tokens: list[str] = (),
              pattern: str = GPT2, files: list[str | Path] | None = None, min_frequency: int = 2,
              progress: bool = False, **kw):
    """Train a `ByteLevelBPE` from text lines and/or UTF-8 files (streamed). kw -> ByteLevelBPE."""
    special_tokens = list(special_tokens)
    check_vocab_size(vocab_size, special_tokens)
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise UserError(f"pattern {pattern!r} is not a valid regex: {e}") from None
    counts: Counter = Counter()
    if files:
        count_pretokens_text(iter_file_blocks(files, progress=progress), pattern, special_tokens, counts)
    if lines is not None:
        count_pretokens_text(lines, pattern, special_tokens, counts)
    if not counts:
        raise UserError("training corpus is empty" + (f" (files: {', '.join(map(str, files))})" if files else ""))
    merges = learn_merges(counts, vocab_size - 256 - len(special_tokens), min_frequency, progress)
    return build_tokenizer(merges, special_tokens, pattern, **kw)
