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


# --- decontamination: remove training documents that contain an evaluation item ---------------

class EvalIndex:
    """The n-grams of evaluation items, to test training documents against.

    An item of >= n words contributes its n-grams; a shorter one (>= min_words) contributes its
    whole word sequence, matched as a contiguous run of a document's words, so that short items
    ("What is 12 plus 34?") are caught too. Items under min_words cannot be told from chance
    overlap and are counted in `too_short`.
    """

    def __init__(self, n: int = 13, min_words: int = 4):
        self.n, self.min_words = n, min_words
        self.by_len: dict[int, dict[int, list[int]]] = {}  # gram length -> hash -> item ids
        self.items: list[str] = []
        self.too_short = 0

    def add(self, text: str, item_id: int | None = None) -> None:
        ws = words(text)
        i = len(self.items) if item_id is None else item_id
        self.items.append(text)
        if len(ws) < self.min_words:
            self.too_short += 1
            return
        k = min(self.n, len(ws))
        table = self.by_len.setdefault(k, {})
        for g in _grams(ws, k):
            ids = table.setdefault(_h(g), [])
            if not ids or ids[-1] != i:
                ids.append(i)

    def hits(self, text: str) -> set[int]:
        """Ids of the items that `text` contains an n-gram (or the whole short item) of."""
        ws, found = words(text), set()
        for k, table in self.by_len.items():
            for g in _grams(ws, k):
                found.update(table.get(_h(g), ()))
        return found


def packaged_eval_sets(seed: int = 1234, limit: int = 0) -> dict[str, list[str]]:
    """Task name -> the texts of its items, for every registered eval task, as `llmlab eval`
    draws them with this seed (limit 0: each task's default item count; fixed pools such as
    MMLU and HumanEval: raise limit to cover them whole)."""
    from llmlab.eval.tasks import get_task, task_names
    out = {}
    for name in task_names():
        task = get_task(name)
        out[name] = list(task.texts(task.items(limit or None, seed)))
    return out


def decontaminate(docs: Iterable[str], eval_sets: dict[str, list[str]], n: int = 13,
                  min_words: int = 4):
    """Yield (doc, hit) for each training doc: hit is None when clean, else {task: [item ids]}.
    The caller keeps the clean ones (GPT-3 App. C removes whole documents that overlap)."""
    index, owner = EvalIndex(n, min_words), []
    for task, texts in eval_sets.items():
        for j, t in enumerate(texts):
            owner.append((task, j))
            index.add(t)
    for doc in docs:
        ids = index.hits(doc)
        if not ids:
            yield doc, None
            continue
        hit: dict[str, list[int]] = {}
        for i in sorted(ids):
            task, j = owner[i]
            hit.setdefault(task, []).append(j)
        yield doc, hit


def decontaminate_file(data: str | Path, output: str | Path, eval_sets: dict[str, list[str]], n: int = 13,
                       min_words: int = 4) -> dict:
    """Filter a JSONL ({"text": ...} a line) or plain-text (a document a line) training file;
    writes `output` atomically and returns the counts (per task: items found, documents removed)."""
    from llmlab.checkpoint import atomic_file
    src, dst = Path(data), Path(output)
    if not src.is_file():
        raise UserError(f"decontaminate: data file not found: {src}")
    jsonl = src.name.endswith(".jsonl")

    def lines():
        with open(src, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if jsonl:
                    try:
                        rec = json.loads(line)
                        yield line, str(rec["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise UserError(f"{src}:{lineno}: expected a JSON object with a 'text' field") from None
                else:
                    yield line, line.rstrip("\n")

    raw = {}
    counts = {"documents": 0, "removed": 0, "kept": 0, "ngram": n,
              "per_task": {t: {"items": len(v), "items_found": 0, "docs_removed": 0} for t, v in eval_sets.items()}}
    found: dict[str, set[int]] = {t: set() for t in eval_sets}
    with atomic_file(dst) as out:  # a kill or a bad line leaves `output` as it was
        def docs():
            for line, text in lines():
                raw["line"] = line
                yield text
        for _, hit in decontaminate(docs(), eval_sets, n, min_words):
            counts["documents"] += 1
            if hit is None:
                out.write(raw["line"] if raw["line"].endswith("\n") else raw["line"] + "\n")
                counts["kept"] += 1
                continue
            counts["removed"] += 1
            for task, ids in hit.items():
                found[task].update(ids)
                counts["per_task"][task]["docs_removed"] += 1
    for t, ids in found.items():
        counts["per_task"][t]["items_found"] = len(ids)
    return counts
