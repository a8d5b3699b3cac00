"""Script-based language identification: en / zh / other.

A heuristic stand-in for fastText LID (used by CCNet/LLaMA): count letters by Unicode script.
A Han character carries about a word, so Han characters are weighed against Latin *words*:
a document is zh if han / (han + latin_words) >= `zh_min_share` and it has little kana (Japanese
mixes kanji with kana); en if basic Latin letters are at least `en_min_share` of all letters;
else other (Cyrillic, Arabic, Japanese, too few letters...). It cannot tell English from French
or German; our English sources are English.
"""
from __future__ import annotations

import re

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_LATIN = re.compile(r"[A-Za-z]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_KANA = re.compile(r"[\u3040-\u30ff]")
_LETTER = re.compile(r"[^\W\d_]")


def script_counts(text: str) -> dict[str, int]:
    """Character counts by script (han, latin, kana, all letters) and Latin word count."""
    return {"han": len(_HAN.findall(text)), "latin": len(_LATIN.findall(text)),
            "latin_words": len(_LATIN_WORD.findall(text)), "kana": len(_KANA.findall(text)),
            "letters": len(_LETTER.findall(text))}


def detect_language(text: str, zh_min_share: float = 0.3, en_min_share: float = 0.8,
                    min_letters: int = 3, max_kana_share: float = 0.1) -> str:
    c = script_counts(text)
    han, latin, letters = c["han"], c["latin"], c["letters"]
    if letters < min_letters:
        return "other"
    if han and han / (han + c["latin_words"]) >= zh_min_share and c["kana"] <= max_kana_share * letters:
        return "zh"
    if latin / letters >= en_min_share:
        return "en"
    return "other"
