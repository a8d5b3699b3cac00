"""Sentences (lists of tokens) for embedding training, streamed from the data stage's packaged
sources (llmlab.data.sources) or from UTF-8 text files (one sentence per line).

English text is split into words by a Unicode regex (letters/digits, inner apostrophes and
hyphens kept); Chinese text is segmented with jieba. Files are split on whitespace, unless they
are mostly Chinese with no spaces between words (`files_segment`): then jieba, with a note. A document is one sentence (windows do not
cross documents); documents longer than MAX_SENTENCE tokens are cut into pieces.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from llmlab.errors import UserError
from llmlab.log import get_logger

ZH_SOURCES = ("news_zh", "reviews_zh", "idioms_zh")
MAX_SENTENCE = 10_000  # gensim's MAX_WORDS_IN_BATCH: longer sentences are cut, not truncated
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_HAS_WORD = re.compile(r"[^\W_]")


def words_en(text: str, lower: bool = True) -> list[str]:
    return _WORD.findall(text.lower() if lower else text)


def words_zh(text: str, lower: bool = True) -> list[str]:
    """jieba's default (accurate) mode; punctuation and whitespace tokens are dropped."""
    import jieba

    jieba.setLogLevel(60)  # silence its "Building prefix dict" messages
    words = [w for w in jieba.lcut(text) if _HAS_WORD.search(w)]
    return [w.lower() for w in words] if lower else words


def files_segment(files: list[str], sample_chars: int = 65536) -> str:
    """segment=auto for files: 'jieba' when their first `sample_chars` characters are mostly Chinese
    (llmlab.data.langid) and not already segmented (more than 3 Han characters per whitespace token
    that holds any: segmented text has about 1.5), said in one log line; else 'whitespace'. Chinese
    text with jieba missing is a UserError (install it, or say segment=whitespace)."""
    from llmlab.data.langid import detect_language, script_counts

    sample = ""
    for f in files:
        if Path(f).is_file() and len(sample) < sample_chars:
            with open(f, encoding="utf-8-sig", errors="ignore") as fh:  # a bad byte is reported by the real pass
                sample += fh.read(sample_chars - len(sample)) + "\n"
    han_tokens = sum(1 for t in sample.split() if script_counts(t)["han"])
    if detect_language(sample) != "zh" or script_counts(sample)["han"] <= 3 * han_tokens:
        return "whitespace"
    try:
        import jieba  # noqa: F401
    except ImportError:
        raise UserError(f"{files[0]}: the text is Chinese with no spaces between words, and segmenting it needs "
                        "jieba: pip install jieba (or pass segment=whitespace to keep each line's runs as words)") from None
    named = f"{files[0]}" + (f" (and {len(files) - 1} more)" if len(files) > 1 else "")
    get_logger().info(f"embed: {named} is Chinese with no spaces between words: segmenting with jieba "
                      "(segment=auto; segment=whitespace splits on spaces only)")
    return "jieba"


def _cut(tokens: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(tokens), MAX_SENTENCE):
        yield tokens[i:i + MAX_SENTENCE]


def iter_sentences(sources: Iterable[str] = ("wiki_en",), files: Iterable[str] = (), lower: bool = True,
                   max_tokens: int = 0, segment: str = "auto") -> Iterator[list[str]]:
    """Sentences from `files` (if any) else from the packaged `sources`, until `max_tokens`
    tokens (0 = all). segment: 'auto' (sources: jieba for the Chinese ones, regex words otherwise;
    files: `files_segment`, whitespace unless unsegmented Chinese), 'whitespace', 'jieba' or 'regex'."""
    from llmlab.data.sources import iter_documents

    if segment not in ("auto", "whitespace", "jieba", "regex"):
        raise UserError(f"config key 'segment': {segment!r} is not one of auto, whitespace, jieba, regex")
    total = 0
    files = list(files)
    if segment == "auto" and files:
        segment = files_segment(files)

    def split(text: str, chinese: bool) -> list[str]:
        if segment == "whitespace":
            return text.lower().split() if lower else text.split()
        if segment == "jieba" or (segment == "auto" and chinese):
            return words_zh(text, lower)
        return words_en(text, lower)

    def docs() -> Iterator[tuple[str, bool]]:
        for f in files:
            p = Path(f)
            if not p.is_file():
                raise UserError(f"corpus file not found: {p}")
            try:
                with open(p, encoding="utf-8-sig") as fh:  # a leading BOM is no text
                    for line in fh:
                        yield line, False
            except UnicodeDecodeError:
                from llmlab.data.packages import not_utf8
                raise not_utf8(p, "corpus file ") from None
        if not files:
            for name in sources:
                for doc in iter_documents(name):
                    yield doc, name in ZH_SOURCES

    for text, chinese in docs():
        tokens = split(text, chinese)
        if max_tokens and total + len(tokens) > max_tokens:
            tokens = tokens[:max_tokens - total]
        if tokens:
            total += len(tokens)
            yield from _cut(tokens)
        if max_tokens and total >= max_tokens:
            return
