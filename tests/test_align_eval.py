"""Held-out evaluation helpers (evaluate.py), strict arithmetic checks and on-policy preference data."""
from __future__ import annotations

import copy

import pytest
import torch

from llmlab.align.evaluate import (arithmetic_splits, arithmetic_train, decode, implicit_reward_accuracy,
                                   pair_logprobs, score_completions, win_rate)
from llmlab.align.reward_model import RewardModel, RewardScorer
from llmlab.align.rewards import strict_arithmetic_reward, strict_exact_match_reward
from llmlab.align.sampled_rankings import gold_vs_samples, graded_strict_reward
from llmlab.align.toy import CharTokenizer
from llmlab.model import ModelConfig, Transformer


def tiny(seed=0):
    tok = CharTokenizer()
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    return tok, Transformer(cfg).eval()


def test_strict_checks():
    row = {"answer": "6"}
    assert strict_exact_match_reward(row, "6") == strict_exact_match_reward(row, " 6.\n") == 1.0
    for text in ("2 * 3 = 6", "6 apples", "The answer is 6", "", "-6"):
        assert strict_exact_match_reward(row, text) == 0.0, text
    assert strict_exact_match_reward({"answer": "1"}, "1 + 0 = 1") == 0.0  # an echo never counts
    assert strict_arithmetic_reward(row, "6") == pytest.approx(1.2)
    assert strict_arithmetic_reward(row, "7") == pytest.approx(0.2)
    assert strict_arithmetic_reward(row, "six") == 0.0
    assert graded_strict_reward(row, "6") == 1.0 and graded_strict_reward(row, "8") == pytest.approx(0.25)
    assert graded_strict_reward(row, "2 * 3 = 6") == 0.0


def test_flexible_checks_read_the_last_integer():
    from llmlab.align.rewards import flexible_arithmetic_reward, last_int_match_reward
    from llmlab.align.sampled_rankings import graded_answer_reward
    from llmlab.finetune.instruct.builders import grade_answer
    row = {"answer": "6"}
    texts = ("6", " 6.\n", "2 * 3 = 6", "The answer is 6.", "6 apples", "2 * 3 = 7", "6 - 1 = 5", "7", "six", "",
             "2 * 3 = ", "-6", "1,006")
    want = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert [last_int_match_reward(row, t) for t in texts] == want
    # the same reading as the SFT stage's grader (lm-eval gsm8k "flexible-extract")
    assert [float(grade_answer(t, 6)) for t in texts] == want
    assert last_int_match_reward({"answer": "-5"}, "1 - 6 = -5") == 1.0
    assert last_int_match_reward({"answer": "1006"}, "1,006") == 1.0
    # right in any form 1, + 0.2 only when also bare; a wrong bare guess earns nothing
    assert [flexible_arithmetic_reward(row, t) for t in ("6", "2 * 3 = 6", "7", "2 * 3 = 7", "six")] == \
        pytest.approx([1.2, 1.0, 0.0, 0.0, 0.0])
    assert [graded_answer_reward(row, t) for t in ("6", "2 * 3 = 6", "8", "2 * 3 = 8", "six")] == \
        pytest.approx([1.01, 1.0, 0.25, 0.25, 0.0])


def test_splits_are_disjoint_and_seeded():
    test, dev = arithmetic_splits(32, 32, max_operand=9)
    train = arithmetic_train(64, 0, test + dev, max_operand=9)
    sets = [{r["prompt"] for r in x} for x in (test, dev, train)]
    assert [len(x) for x in sets] == [32, 32, 64]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert arithmetic_train(64, 0, test + dev, max_operand=9) == train
    assert arithmetic_train(64, 1, test + dev, max_operand=9) != train


def test_decode_greedy_matches_rollout_and_kl():
    from llmlab.align.rollout import sample
    tok, m = tiny()
    prompts = [tok.encode("1+2="), tok.encode("13+4=")]
    g = decode(m, tok, prompts, 4, ref=copy.deepcopy(m))
    ro = sample(m, prompts, 4, tok.eos_id, tok.pad_id, 0.0)
    assert g["completions"] == ro.completions()
    assert g["kl"] == pytest.approx([0.0, 0.0], abs=1e-5)  # a policy equal to its reference
    _, other = tiny(1)
    g2 = decode(m, tok, prompts, 4, ref=other)
    # the exact per-step KL along the path, recomputed from full forwards
    ids = torch.tensor([p + c for p, c in zip(prompts, g2["completions"])][:1])
    with torch.no_grad():
        lp, lq = m(ids).log_softmax(-1), other(ids).log_softmax(-1)
    P, C = len(prompts[0]), len(g2["completions"][0])
    want = sum(float((lp[0, t].exp() * (lp[0, t] - lq[0, t])).sum()) for t in range(P - 1, P - 1 + C))
    assert g2["kl"][0] == pytest.approx(want, rel=1e-4)


def test_score_completions_equals_the_reward_scorer():
    tok, m = tiny()
    rm = RewardModel(m).eval()
    prompts, comps = ["1+2=", "13+4="], ["3", "17"]
    want = RewardScorer(rm, tok)(prompts, comps)
    got = score_completions(rm, tok, [tok.encode(p) for p in prompts], [tok.encode(c) for c in comps])
    assert got == pytest.approx(want.tolist(), abs=1e-5)


def test_win_rate_and_implicit_reward_accuracy():
    assert win_rate([1, 0, 1, 0], [0, 0, 1, 1]) == {"win_rate": 0.5, "wins": 1, "losses": 1, "ties": 2}
    assert win_rate([2.0, 1.0], [1.0, 3.0], same=[True, False])["win_rate"] == 0.25
    tok, m = tiny()
    rows = [{"prompt": "1+2=", "chosen": "3", "rejected": "4"}, {"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    lp = pair_logprobs(m, tok, rows)
    assert implicit_reward_accuracy(lp, lp) == 0.0  # a policy equal to its reference prefers nothing
    assert implicit_reward_accuracy((lp[0] + 1, lp[1]), lp) == 1.0


def test_gold_vs_samples_pairs_and_rankings():
    tok, m = tiny()
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "rejected": str(a + b + 1)} for a, b in ((1, 2), (3, 4))]
    pairs, ranks = gold_vs_samples(m, tok, rows, samples=3, max_new_tokens=3, chat=False)
    assert len(pairs) == len(ranks) == 2
    for r, p, k in zip(rows, pairs, ranks):
        assert p["chosen"] == r["answer"] and p["rejected"] != r["answer"]
        assert k["completions"][0] == r["answer"] and len(set(k["completions"])) == len(k["completions"])
        grades = [graded_strict_reward(r, c) for c in k["completions"]]
        assert grades == sorted(grades, reverse=True)


def test_on_policy_pairs_are_the_models_own_samples_split_by_the_checker():
    from llmlab.align.rollout import sample
    from llmlab.align.sampled_rankings import on_policy_pairs
    tok, m = tiny()
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in ((1, 2), (3, 4), (5, 1), (2, 2))]
    k = 6
    # a stub checker: "right" when the sample starts with an even digit, so both kinds occur at random
    even = lambda row, t: float(t[:1] in "02468")  # noqa: E731
    pairs, counts = on_policy_pairs(m, tok, rows, samples=k, max_new_tokens=3, seed=3, chat=False, check=even)
    # the samples it ranked are exactly what the sampler draws with that seed
    gen = torch.Generator().manual_seed(3)
    ro = sample(m, [tok.encode(r["prompt"]) for r in rows for _ in range(k)], 3, tok.eos_id, tok.pad_id, 1.0, 1.0, gen)
    texts = [tok.decode([t for t in c if t != tok.eos_id]).strip() for c in ro.completions()]
    assert counts["prompts"] == 4 and counts["gold_fallback"] == 0
    assert counts["on_policy"] + counts["all_right"] + counts["all_wrong_skipped"] == 4
    assert len(pairs) == counts["on_policy"] >= 1
    for p in pairs:
        i = [r["prompt"] for r in rows].index(p["prompt"])
        own = [t for t in texts[i * k:(i + 1) * k] if t]
        assert p["chosen"] == next(t for t in own if even(None, t))  # the first right sample
        assert p["rejected"] == next(t for t in own if not even(None, t))  # the first wrong one
        assert p["source"] == "on_policy"
    assert on_policy_pairs(m, tok, rows, samples=k, max_new_tokens=3, seed=3, chat=False, check=even) == (pairs, counts)
    # nothing right: no pairs, unless the gold answer stands in for the chosen sample
    never = lambda row, t: 0.0  # noqa: E731
    none, c0 = on_policy_pairs(m, tok, rows, samples=2, max_new_tokens=3, chat=False, check=never)
    assert none == [] and c0["all_wrong_skipped"] == 4
    gold, c1 = on_policy_pairs(m, tok, rows, samples=2, max_new_tokens=3, chat=False, check=never, gold_fallback=True)
    assert [p["chosen"] for p in gold] == [r["answer"] for r in rows] and c1["gold_fallback"] == 4
    # everything right: no preference, no pair
    always = lambda row, t: 1.0  # noqa: E731
    assert on_policy_pairs(m, tok, rows, samples=2, max_new_tokens=3, chat=False, check=always)[0] == []
