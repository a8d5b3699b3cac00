"""Text normalisation before filtering (the notes' "keyword-based" cleaning: HTML tags, links).

* Unicode NFC, so identical text has identical code points (the exact-dedup hash relies on it).
* Control characters removed (tabs and newlines kept), trailing spaces stripped, 3+ blank lines
  collapsed to one blank line.
* HTML tags stripped (`<br>`, `<a href=...>`): only known HTML tag names, so text such as
  `<EMAIL>` or `3 < 4 > 2` survives.
"""
from __future__ import annotations

import re
import unicodedata

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_HTML = ("a|abbr|b|big|blockquote|body|br|center|code|div|em|font|h[1-6]|head|hr|html|i|img|li|link|meta|"
         "nowiki|ol|p|pre|ref|s|script|small|span|strike|strong|style|sub|sup|table|tbody|td|th|title|tr|tt|u|ul")
_TAG = re.compile(rf"</?(?:{_HTML})(?:\s[^<>]*)?/?>", re.IGNORECASE)  # known HTML tags only: keep "<EMAIL>", "3 < 4"
_TRAIL = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CTRL.sub("", text)
    text = _TAG.sub("", text)
    text = _TRAIL.sub("\n", text)
    text = _BLANKS.sub("\n\n", text)
    return text.strip()
