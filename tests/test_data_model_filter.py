"""Model-based filters, sentence dedup, temperature sampling and curricula (llmlab.data)."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from llmlab.data.model_filter import NgramLM, QualityClassifier, hashed_features
from llmlab.data.schedule import curriculum_mix, temperature_weights, weights_at
from llmlab.data.sentence_dedup import SentenceDeduper, repeats_ngram
from llmlab.errors import UserError

GOOD = ["The river flows through the old town and into the sea.", "Paris is the capital city of France.",
        "The museum holds paintings from the nineteenth century.", "Water boils at one hundred degrees."] * 3
BAD = ["click here buy now cheap cheap deal", "lol omg best deal click click", "win free prize now click",
       "cheap pills buy buy now"] * 3


def test_classifier_equals_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    clf = QualityClassifier(dim=1 << 10, C=1.0).fit(GOOD, BAD)
    X = hashed_features(GOOD + BAD, 1 << 10)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(X, [1] * len(GOOD) + [0] * len(BAD))
    assert np.abs(clf.coef - ref.coef_[0]).max() < 1e-4 and abs(clf.intercept - ref.intercept_[0]) < 1e-4
    test = ["The old town lies by the river.", "buy cheap now click"]
    assert np.allclose(clf.score(test), ref.predict_proba(hashed_features(test, 1 << 10))[:, 1], atol=1e-5)
    assert clf.score(test)[0] > 0.5 > clf.score(test)[1]


def test_ngram_lm_hand_computation_and_normalisation():
    lm = NgramLM(n=2, discount=0.5).fit(["a b", "a c"])
    # unigram counts (predicted tokens): a 2, b 1, c 1, </s> 2 -> N = 6; vocab {a, b, c, </s>, <unk>} = 5
    p_uni_b = (1 + 1) / (6 + 5)
    # history "a": c(a b) = 1, c(a c) = 1, total 2, N1+ = 2
    want = (1 - 0.5) / 2 + 0.5 * 2 / 2 * p_uni_b
    assert lm.prob("b", ["a"]) == pytest.approx(want)
    for h in (["a"], ["<s>"], ["zzz"]):
        assert sum(lm.prob(w, h) for w in lm.vocab) == pytest.approx(1.0)
    # perplexity of "a b": p(a|<s>) p(b|a) p(</s>|b), geometric mean
    p = [lm.prob("a", ["<s>"]), lm.prob("b", ["a"]), lm.prob("</s>", ["b"])]
    assert lm.perplexity("a b") == pytest.approx(math.exp(-sum(map(math.log, p)) / 3))
    assert lm.perplexity("a b") < lm.perplexity("c b a a")


def test_sentence_dedup():
    assert repeats_ngram("the cat sat the cat sat the cat sat on it")
    assert not repeats_ngram("the cat sat on the mat and the cat sat down")
    d = SentenceDeduper()
    a = d("All rights reserved by us. The first story is here. Buy buy now buy buy now buy buy now!")
    assert a == "All rights reserved by us. The first story is here."
    b = d("A second story begins. All rights reserved by us. It ends.")
    assert b == "A second story begins. It ends."
    assert d.counts == {"repeated_ngram": 1, "seen_before": 1}


def test_temperature_sampling_formula_and_draws():
    sizes = {"en": 1_000_000, "zh": 10_000, "sw": 100}
    p = temperature_weights(sizes, temperature=1 / 0.3)
    z = sum(v ** 0.3 for v in sizes.values())
    assert all(p[k] == pytest.approx(v ** 0.3 / z) for k, v in sizes.items())
    assert temperature_weights(sizes, 1.0)["sw"] == pytest.approx(100 / 1_010_100)
    assert max(temperature_weights(sizes, 1e9).values()) == pytest.approx(1 / 3, rel=1e-6)
    rng = np.random.default_rng(0)
    draws = Counter(rng.choice(list(p), size=20_000, p=list(p.values())))
    assert all(abs(draws[k] / 20_000 - p[k]) < 0.01 for k in p)
    with pytest.raises(UserError):
        temperature_weights(sizes, 0)


def test_curriculum_stages_and_blend():
    stages = [(1, {"zh": 1.0}), (3, {"zh": 0.5, "en": 0.5})]  # CPM-2: Chinese first, then bilingual
    assert weights_at(0.1, stages) == {"en": 0.0, "zh": 1.0}
    assert weights_at(0.5, stages) == {"en": 0.5, "zh": 0.5}
    mid = weights_at(0.3, stages, blend=True)  # between midpoints 0.125 and 0.625
    assert mid["en"] == pytest.approx(0.5 * (0.3 - 0.125) / 0.5)
    src = {"zh": lambda: (f"zh{i}" for i in range(10_000)), "en": lambda: (f"en{i}" for i in range(10_000))}
    out = list(curriculum_mix(src, stages, 400, seed=0))
    first = [s for k, s, _ in out if k == 0]
    second = Counter(s for k, s, _ in out if k == 1)
    assert len(first) == 100 and set(first) == {"zh"}
    assert sum(second.values()) == 300 and abs(second["en"] / 300 - 0.5) < 0.1
    docs = [d for _, _, d in out]
    assert len(set(docs)) == len(docs)  # iterators continue across stages: nothing repeats


def test_refine_verb_drops_junk_and_reports(tmp_path):
    from llmlab.data.refine import RefineConfig, refine
    from llmlab.data.sources import poetry_en, wiki_en
    import itertools
    rng = random.Random(0)
    wiki = list(itertools.islice(wiki_en(), 400))[300:]  # past the reference documents used below
    poems = list(itertools.islice(poetry_en(), 40))
    junk = []
    for w in wiki[:20]:  # word salad: the words of a real page, shuffled
        ws = w.split()
        rng.shuffle(ws)
        junk.append(" ".join(ws))
    recs = ([{"text": t, "source": "wiki_en", "lang": "en"} for t in wiki[20:60]]
            + [{"text": t, "source": "poetry_en", "lang": "en"} for t in poems]
            + [{"text": t, "source": "junk", "lang": "en"} for t in junk]
            + [{"text": "这是一个中文句子。", "source": "news_zh", "lang": "zh"}])
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    res = refine(RefineConfig(data=str(data), out_dir=str(tmp_path / "out"), reference_docs=300,
                              classifier_threshold=0.5, perplexity_quantile=0.95))
    per = res["per_source"]
    assert per["junk"].get("kept", 0) == 0  # every shuffled page is caught by one of the filters
    assert per["wiki_en"]["kept"] >= 36  # reference-like pages survive (>= 90%)
    assert per["news_zh"]["not_judged"] == 1 and per["news_zh"]["kept"] == 1
    steps = {s["step"]: s for s in res["steps"]}
    assert {"sentence_dedup", "quality_classifier", "perplexity"} <= set(steps)
    kept = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert len(kept) == res["kept"] and (tmp_path / "out" / "report.md").exists()


def test_filter_gain_corpora_keep_the_test_pages_held_out():
    """The filtering-gain experiment (docs/data.md): junk = a corpus page with its words shuffled;
    test pages are in neither the corpus nor the filters' reference (the first 600 pages); the
    filters drop most of the junk and keep a good share of the real pages."""
    import itertools

    from llmlab.data.sources import wiki_en
    from llmlab.train.filter_gain import corpora
    raw, kept, test = corpora(0, n_pages=40)
    pages = list(itertools.islice(wiki_en(), 740))
    assert len(raw) == 80 and len(test) == 100 and set(kept) <= set(raw)
    twins = Counter(tuple(sorted(t.split())) for t in raw)
    assert set(twins.values()) == {2}  # each clean page and its shuffled copy, nothing else
    clean, junk = [t for t in raw if t in set(pages)], [t for t in raw if t not in set(pages)]
    assert len(clean) == len(junk) == 40
    assert not set(test) & (set(raw) | set(pages[:600]))
    assert sum(t in kept for t in junk) <= 0.25 * 40 and sum(t in kept for t in clean) >= 0.3 * 40
