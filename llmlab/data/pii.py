"""PII scrubbing: replace personal data with placeholders (<EMAIL>, <PHONE>, <ID_NUMBER>,
<CARD_NUMBER>, <IP_ADDRESS>).

Regexes find candidates; validators keep false positives down, so ordinary numbers survive:
  * Chinese resident ID (GB 11643-1999): 17 digits + check character; the check character is
    "10X98765432"[sum(d_i * w_i) mod 11] with weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2, and
    digits 7-14 must be a plausible birth date.
  * Payment card: 13-19 digits (spaces/dashes allowed between groups) passing the Luhn checksum.
  * Phone: Chinese mobile (optional +86 / 0086, then 1[3-9] and 9 digits, spacing allowed) and
    North-American/international style numbers with separators, e.g. +1 (415) 555-0134,
    020-12345678 (Chinese landline with area code).
  * IP: IPv4/IPv6 candidates validated with the standard library's `ipaddress`.
  * Email: local@domain.tld.
Character classes are ASCII ([A-Za-z0-9_], not \\w): in Python \\w matches Chinese characters,
and PII glued to Chinese text ("请联系13812345678") must still be found. Order matters: IDs and cards are replaced before phones, so a phone pattern never eats part of
an ID number; every digit pattern is guarded by (?<!\\d) and (?!\\d) so it never matches inside a
longer number.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from datetime import date

EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9_])")
CN_ID = re.compile(r"(?<![0-9A-Za-z])(\d{17}[\dXx])(?![0-9A-Za-z])")
CARD = re.compile(r"(?<![\d+])(?<!\d-)(\d(?:[ -]?\d){12,18})(?!\d|-\d)")
CN_MOBILE = re.compile(r"(?<![\d+])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d){8}(?!\d)")
PHONE = re.compile(r"(?<![\d+])(?<!\d[.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[.-])\d{3,4}[ .-]?\d{3,4}(?!\d|[.-]\d)"
                   r"|(?<![\d+])(?<!\d[.-])\+\d{1,3}[ .-]?\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}(?!\d|[.-]\d)")
IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
IPV6 = re.compile(r"(?<![A-Za-z0-9_:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![A-Za-z0-9_:])")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def cn_id_valid(s: str) -> bool:
    """GB 11643-1999 check character and a real birth date (YYYYMMDD at digits 7-14)."""
    if len(s) != 18 or not s[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(s[:17], _ID_WEIGHTS))
    if _ID_CHECK[total % 11] != s[17].upper():
        return False
    try:
        born = date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2100


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10): double every second digit from the right, sum digit sums, total % 10 == 0."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ip_valid(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def _sub(pattern: re.Pattern, placeholder: str, text: str, counts: Counter, kind: str, valid=None) -> str:
    def repl(m: re.Match) -> str:
        if valid is not None and not valid(m.group(0)):
            return m.group(0)
        counts[kind] += 1
        return placeholder
    return pattern.sub(repl, text)


def scrub_pii(text: str, counts: Counter | None = None) -> str:
    """Replace PII in `text` by placeholders; `counts[kind]` is incremented per replacement."""
    c = counts if counts is not None else Counter()
    text = _sub(EMAIL, "<EMAIL>", text, c, "email")
    text = _sub(CN_ID, "<ID_NUMBER>", text, c, "cn_id", cn_id_valid)
    text = _sub(CARD, "<CARD_NUMBER>", text, c, "card",
                lambda s: luhn_valid(re.sub(r"[ -]", "", s)) and len(set(re.sub(r"[ -]", "", s))) > 1)
    text = _sub(CN_MOBILE, "<PHONE>", text, c, "phone")
    text = _sub(PHONE, "<PHONE>", text, c, "phone")
    text = _sub(IPV6, "<IP_ADDRESS>", text, c, "ip",
                lambda s: sum(ch not in ":." for ch in s) >= 3 and _ip_valid(s))
    text = _sub(IPV4, "<IP_ADDRESS>", text, c, "ip", _ip_valid)
    return text
