"""The archaic-word score of the data stage (llmlab.data.archaic), by hand-counted examples."""
from __future__ import annotations

import pytest

from llmlab.data.archaic import archaic_score, archaic_words


@pytest.mark.parametrize("text, hits, n", [
    ("Thou hast the book", 2, 4),                                # Early Modern pronoun + verb
    ("Whan that Aprille with his shoures soote", 1, 7),           # Chaucer: "whan"
    ("He loveth her and knoweth it", 2, 6),                       # old "-eth" verbs
    ("Beneath the teeth of Elizabeth, on the seventh day", 0, 9),  # modern "-eth" words
    ("The city has a population of 20,000 people.", 0, 7),        # digits are not words
    ("'Tis the season o'er the hills", 2, 6),                     # apostrophe forms are one word
])
def test_archaic_words_counts(text, hits, n):
    assert archaic_words(text) == (hits, n)


def test_archaic_score_is_share_and_zero_without_words():
    assert archaic_score("Thou art here now") == pytest.approx(1 / 4)
    assert archaic_score("") == 0.0 and archaic_score("12 34 !!") == 0.0
