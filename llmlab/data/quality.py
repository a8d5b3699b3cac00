"""Heuristic quality filters, after Gopher (Rae et al. 2021, "Scaling Language Models", App. A.1.1)
and the notes' statistic-based filters (symbol-to-word ratio, sentence length, punctuation).

Each check returns a reason string when the document fails; `quality_reason` returns the first
failing reason (or None). Defaults follow Gopher except where our short documents need otherwise:

  check                        Gopher            ours (default)
  words in document            50 .. 100000      min_words=10 .. 100000 (reviews/idioms are short)
  mean word length (en)        3 .. 10           3 .. 10
  symbol/word ratio (#, ...)   < 0.1             < 0.1
  digit share of characters    -                 < 0.25 (the notes' "digit ratio"; tables, ids)
  lines starting with a bullet < 90%             < 90%   } only for docs of >= 3 lines: a one-line
  lines ending with an ellipsis< 30%             < 30%   } review ending in "……" is not a snippet list
  words with a letter (en)     >= 80%            >= 80%
  English stop words (en)      >= 2              >= 2
  duplicate lines              < 30% of lines,   same
                               < 20% of chars
  top 2/3/4-gram char share    < .20/.18/.16     same (en; see below)
  duplicate 5..10-gram chars   < .15 ... .10     same (en)

"Words" are whitespace/punctuation-separated tokens, except that each Han character counts as one
word, so length limits work for Chinese. The word n-gram repetition checks are applied to English
only by default: with one character per "word", Gopher's n-gram thresholds would flag ordinary
Chinese news (names and set phrases recur); line-level repetition still applies to Chinese.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_BULLET = re.compile(r"^\s*(?:[-*•‣◦●▪·]|\d+[.)])\s")
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_STOP = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
_DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


@dataclass
class QualityConfig:
    min_words: int = field(default=10, metadata={"help": "drop docs with fewer words (Han char = 1 word); Gopher: 50"})
    max_words: int = 100_000
    min_mean_word_len: float = 3.0
    max_mean_word_len: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_digit_ratio: float = 0.25
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_lines_for_line_checks: int = field(default=3, metadata={
        "help": "bullet/ellipsis line shares are only checked for docs with at least this many lines"})
    min_alpha_words: float = 0.8
    min_stopwords: int = 2
    max_dup_line_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    ngram_languages: list[str] = field(default_factory=lambda: ["en"],
                                       metadata={"help": "languages the word n-gram repetition checks apply to"})


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def top_ngram_char_frac(ws: list[str], n: int) -> float:
    """Share of word characters inside the most frequent n-gram's occurrences (if it repeats)."""
    total = sum(map(len, ws))
    if len(ws) < n or total == 0:
        return 0.0
    counts = Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
    gram, c = counts.most_common(1)[0]
    return 0.0 if c < 2 else sum(map(len, gram)) * c / total


def dup_ngram_char_frac(ws: list[str], n: int) -> float:
    """Share of word characters covered by repeated n-grams (non-overlapping, first copy not counted)."""
    total = sum(map(len, ws))
    if len(ws) < n or total == 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(ws)
    i = 0
    while i <= len(ws) - n:
        g = tuple(ws[i:i + n])
        if g in seen:
            for j in range(i, i + n):
                covered[j] = True
            i += n
        else:
            seen.add(g)
            i += 1
    return sum(len(w) for w, c in zip(ws, covered) if c) / total


def dup_line_fracs(text: str) -> tuple[float, float]:
    """(share of lines that repeat an earlier line, share of characters in those lines)."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not lines:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_c = 0
    for ln in lines:
        if ln in seen:
            dup_n += 1
            dup_c += len(ln)
        seen.add(ln)
    return dup_n / len(lines), dup_c / max(1, sum(map(len, lines)))


def quality_reason(text: str, lang: str, cfg: QualityConfig) -> str | None:
    """The first failed check's name, or None if the document passes."""
    ws = words(text)
    n = len(ws)
    if n < cfg.min_words:
        return "too_few_words"
    if n > cfg.max_words:
        return "too_many_words"
    nonspace = len(text) - len(_SPACE.findall(text))
    if len(_DIGIT.findall(text)) / max(1, nonspace) > cfg.max_digit_ratio:
        return "digit_ratio"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > cfg.max_symbol_word_ratio:
        return "symbol_word_ratio"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) >= max(1, cfg.min_lines_for_line_checks):
        if sum(bool(_BULLET.match(ln)) for ln in lines) / len(lines) > cfg.max_bullet_lines:
            return "bullet_lines"
        if sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines) > cfg.max_ellipsis_lines:
            return "ellipsis_lines"
    dup_lines, dup_chars = dup_line_fracs(text)
    if dup_lines > cfg.max_dup_line_frac:
        return "dup_lines"
    if dup_chars > cfg.max_dup_line_char_frac:
        return "dup_line_chars"
    if lang == "en":
        mean_len = sum(map(len, ws)) / n
        if not cfg.min_mean_word_len <= mean_len <= cfg.max_mean_word_len:
            return "mean_word_length"
        tokens = text.split()
        if sum(1 for t in tokens if _HAS_LETTER.search(t)) / max(1, len(tokens)) < cfg.min_alpha_words:
            return "alpha_words"
        if len(_STOP.intersection(w.lower() for w in ws)) < cfg.min_stopwords:
            return "stopwords"
    if lang in cfg.ngram_languages:
        lw = [w.lower() for w in ws]
        for k, limit in _TOP_NGRAM.items():
            if top_ngram_char_frac(lw, k) > limit:
                return f"top_{k}gram"
        for k, limit in _DUP_NGRAM.items():
            if dup_ngram_char_frac(lw, k) > limit:
                return f"dup_{k}gram"
    return None
