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


def test_data_build_drops_archaic_poetry_and_reports_it(tmp_path):
    import json

    from llmlab.data.pipeline import DataBuildConfig, build

    only_poetry = {"wiki_en": 0, "poetry_en": 1.0, "news_zh": 0, "reviews_zh": 0, "idioms_zh": 0}
    rep = build(DataBuildConfig(out_dir=str(tmp_path / "a"), max_docs=80, weights=only_poetry, progress=False,
                                near_dedup=False))
    step = next(s for s in rep["steps"] if s["step"] == "archaic")
    assert step["removed"] > 0 and step["reasons"] == {"archaic_words": step["removed"]}
    assert rep["per_source"]["poetry_en"]["drop_archaic"] == step["removed"]
    kept = [json.loads(ln)["text"] for f in ("train.jsonl", "val.jsonl") for ln in open(tmp_path / "a" / f)]
    assert kept and all(archaic_score(t) <= 0.01 for t in kept)
    off = build(DataBuildConfig(out_dir=str(tmp_path / "b"), max_docs=80, weights=only_poetry, progress=False,
                                near_dedup=False, max_archaic=1.0))
    assert "archaic" not in [s["step"] for s in off["steps"]]
