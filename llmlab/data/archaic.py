"""Archaic-English score: the share of words that only Early Modern or Middle English uses.

A word-list filter in the spirit of the notes' statistic-based filters (and of Gopher's stop-word
test, Rae et al. 2021, App. A.1.1, turned around): a document is archaic when more than
`max_share` of its words are markers such as "thou", "hath", "quoth" (Early Modern English,
Shakespeare/King James) or "whan", "thei", "swich" (Middle English, Chaucer), or verbs in the old
third-person "-eth" ("loveth"). The Gutenberg poetry source is full of such text; a 4M-parameter
model trained on it for 2M tokens writes fragments of it ("Whan hou thei, if have take a nief"),
which is what the speedrun should not teach (docs/LOG.md, issue 24).

    score = #marker words / #words    (words: letters and apostrophes, lower-cased)
"""
from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")

# Early Modern English: pronouns, verb forms and adverbs that modern prose does not use.
EARLY_MODERN = frozenset("""
thou thee thy thine ye hath doth dost hast hadst shalt wilt canst couldst wouldst shouldst
didst mayst mightst wast wert quoth spake spakest ere oft nay yea naught aught whence
hither thither whither wherefore whereof thereof betwixt methinks o'er e'er
ne'er 'tis 'twas 'twere 'twill twas tis thyself unto fain anon alack forsooth prithee perchance
mayhap hark vouchsafe bethink beseech wot wist trow yon yonder thereto wherein whereon
""".split())
# Middle English (Chaucer, Gower, Langland) spellings.
MIDDLE = frozenset("""
whan thei hem hir hire eek eke swich nat noght nought sholde wolde coude seyde sayde seide yaf yif
gan thilke whiche hadde knyght ich moot mot ful wel anon hoom hond sith syn nyght lyf wyf trewe
seyn seith thanne sone yet lyk lyke eyen ybe ycleped yclept iwis ywis certes bifore biforn
""".split()) - {"yet", "anon"}
# "-eth" words that are modern English (not old verb forms).
_ETH_MODERN = frozenset("""
teeth beneath seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth fifteenth
sixteenth seventeenth eighteenth nineteenth twentieth thirtieth fortieth fiftieth hundredth
thousandth millionth elizabeth kenneth seth macbeth meth breath death wreath sheath heath smith
""".split())


def archaic_words(text: str) -> tuple[int, int]:
    """(marker words, all words) of `text`."""
    ws = [w.lower() for w in _WORD.findall(text)]
    hits = 0
    for w in ws:
        if w in EARLY_MODERN or w in MIDDLE:
            hits += 1
        elif len(w) > 5 and w.endswith("eth") and w not in _ETH_MODERN:
            hits += 1
    return hits, len(ws)


def archaic_score(text: str) -> float:
    """Share of archaic marker words among all words (0.0 for a text without words)."""
    hits, n = archaic_words(text)
    return hits / n if n else 0.0
