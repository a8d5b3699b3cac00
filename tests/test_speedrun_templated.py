"""Templated SFT data and the speedrun's held-out judgement: the held-out questions never occur in
the training data, answers are right, and the scores are computed as defined."""
from __future__ import annotations

import re

import pytest

from llmlab.finetune.instruct import templated as T
from llmlab.speedrun.judge import DECODING_GRID, MIN_DISTINCT_2, char_f1, distinct_n, last_int, pick_decoding, score_item


def _users(recs):
    return [m["content"] for r in recs for m in r["messages"] if m["role"] == "user"]


def test_eval_templates_are_not_training_templates():
    more = {t for ts in T.MORE_STORIES_EN.values() for t in ts}  # `stories="more"` (SFT only)
    train = {t for ts in T.TRAIN_ARITH_EN.values() for t in ts} | more | set(T.TRAIN_DEFINE) | set(T.TRAIN_GREET_EN)
    train |= set(T.TRAIN_IDIOM)
    held = {t for ts in T.EVAL_ARITH_EN.values() for t in ts} | set(T.EVAL_DEFINE) | set(T.EVAL_GREET_EN)
    held |= set(T.EVAL_IDIOM)
    valid = {t for ts in T.VALID_ARITH_EN.values() for t in ts}
    assert not train & held and not train & valid and not valid & held
    # no training wording shares the held-out or the validation sets' distinctive phrases either,
    # and the validation wordings share none of the held-out set's
    for t in [t for ts in T.TRAIN_ARITH_EN.values() for t in ts] + sorted(more):
        low = t.lower()
        assert not any(p in low for p in T.EVAL_PHRASES + T.VALID_PHRASES), t
    for t in valid:
        assert not any(p in t.lower() for p in T.EVAL_PHRASES), t
    for t in (t for ts in T.EVAL_ARITH_EN.values() for t in ts):
        assert not any(p in t.lower() for p in T.VALID_PHRASES), t
        assert any(p in t.lower() for p in T.EVAL_PHRASES), t  # the phrase list covers every held-out wording
    for t in valid:
        assert any(p in t.lower() for p in T.VALID_PHRASES), t
    assert len(T.TRAIN_ARITH_EN["+"]) >= 150 and len(T.TRAIN_ARITH_EN["-"]) >= 150  # unseen ones generalise
    # operand-reversing training wordings ("subtract 4 from 7" -> 7 - 4) are there
    assert sum("{b}" in t.split("{a}")[0] for t in T.TRAIN_ARITH_EN["-"]) >= 50


def test_validation_questions_are_neither_trained_nor_evaluated():
    recs = T.build(3000, seed=5)
    users = set(_users(recs))
    held = {it["prompt"] for it in T.heldout_items()}
    valid = T.validation_items()
    assert len({v["prompt"] for v in valid}) == len(valid) == 200  # big enough to rank settings
    assert len(valid) > len([it for it in T.heldout_items() if it["kind"] == "arithmetic"])
    for v in valid:
        assert v["prompt"] not in users and v["prompt"] not in held
        a, b = map(int, re.findall(r"\d+", v["prompt"]))
        assert v["answer"] in (a + b, a - b, b - a) and v["answer"] >= 0
    # every validation wording is asked, reversed ones included
    asked = {t for ts in T.VALID_ARITH_EN.values() for t in ts
             if any(re.fullmatch(re.escape(t).replace(r"\{a\}", r"\d").replace(r"\{b\}", r"\d"), v["prompt"])
                    for v in valid)}
    assert asked == {t for ts in T.VALID_ARITH_EN.values() for t in ts}


def test_edge_facts_are_drawn_as_asked():
    import random
    rng = random.Random(0)
    pairs = [T._operands(rng, "-", 9, edge_share=1.0) for _ in range(600)]
    assert all(a >= b and (a == b or {0, 1} & {a, b}) for a, b in pairs)
    assert sum(a == b for a, b in pairs) > 100  # x - x among them
    plain = [T._operands(rng, "+", 9) for _ in range(2000)]
    share01 = sum(bool({0, 1} & set(p)) for p in plain) / len(plain)
    assert share01 == pytest.approx(0.36, abs=0.04)  # 1 - 0.8 ** 2 by chance alone


def test_hard_facts_are_drawn_as_asked_and_leave_other_draws_alone():
    import random
    rng = random.Random(1)
    plus = [T._operands(rng, "+", 9, hard_share=1.0) for _ in range(3000)]
    assert all(a + b >= 10 and a <= 9 and b <= 9 for a, b in plus)
    assert len(set(plus)) == 45  # every carry sum, both orders
    minus = [T._operands(rng, "-", 9, hard_share=1.0) for _ in range(1000)]
    assert all(a - b in (1, 2) and b >= 0 for a, b in minus) and len(set(minus)) == 16
    times = [T._operands(rng, "*", 9, hard_share=1.0) for _ in range(2000)]
    assert sum(a * b == 0 for a, b in times) / len(times) == pytest.approx(0.19, abs=0.03)  # untouched: by chance
    # edge facts come first: 30 % hard, 40 % by chance (34 of 100 pairs differ by 1 or 2), 30 % edge
    # (a 0 or 1 beside x: differences 1 or 2 for 2 resp. 3 of the 10 x; a - a: never)
    mixed = [T._operands(rng, "-", 9, edge_share=0.3, hard_share=0.3) for _ in range(4000)]
    assert sum(a - b in (1, 2) for a, b in mixed) / len(mixed) == pytest.approx(0.3 + 0.4 * 0.34 + 0.3 * 0.5 / 3, abs=0.03)
    # hard_share 0 draws exactly what the draw did before it existed (same random stream)

    def before(rng, op, edge_share):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if edge_share and rng.random() < edge_share:
            kind = rng.choice("01=" if op == "-" else "01")
            if kind == "=":
                b = a = rng.randint(0, 9)
            elif rng.random() < 0.5:
                b = int(kind)
            else:
                a = int(kind)
        return (b, a) if op == "-" and b > a else (a, b)
    r1, r2 = random.Random(5), random.Random(5)
    for i in range(500):
        op, e = "+-*"[i % 3], (0.0, 0.25)[i % 2]
        assert T._operands(r1, op, 9, e, 0.0) == before(r2, op, e)


def test_build_answers_are_correct_and_heldout_questions_unseen():
    recs = T.build(1500, seed=3)
    assert len(recs) == 1500 and {r["kind"] for r in recs} == {"arithmetic", "definition", "greeting", "idiom"}
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
    for r in recs:
        if r["kind"] == "arithmetic":
            reply = r["messages"][1]["content"]
            a, op, b, c = re.fullmatch(r"(\d+) ([+×-]) (\d+) = (-?\d+)[.。]", reply).groups()
            assert int(c) == ops[op](int(a), int(b)) == r["answer"] and int(c) >= 0
            q = r["messages"][0]["content"]
            assert sorted(re.findall(r"\d+", q)) == sorted([a, b])  # the same operands ("subtract b from a")
    users = set(_users(recs))
    items = T.heldout_items()
    kinds = {it["kind"] for it in items}
    assert kinds == {"arithmetic", "greeting", "definition", "idiom"}
    for it in items:
        assert it["prompt"] not in users
        if it["kind"] in ("definition", "idiom"):  # held-out subjects never appear in any question
            assert not any(it["subject"] in u for u in users if r"“" in u or it["kind"] == "definition")
    for it in items:
        if it["kind"] == "arithmetic":
            a, b = map(int, re.findall(r"\d+", it["prompt"]))
            assert 0 <= a <= 9 and 0 <= b <= 9
            assert it["answer"] == (a + b if "plus" in it["prompt"] or "+" in it["prompt"] else a - b)


def test_scores_by_hand():
    assert distinct_n(["a b a b", "a b c"]) == pytest.approx(3 / 5)  # bigrams ab ba ab ab bc
    assert distinct_n(["one"]) == 0.0
    assert char_f1("画蛇添足", "画蛇添足多余") == pytest.approx(2 * 1 * (4 / 6) / (1 + 4 / 6))
    assert last_int("5 + 7 = 12.") == 12 and last_int("no number") is None
    assert score_item({"kind": "arithmetic", "answer": 12}, "7 + 5 = 12.") == 1.0
    assert score_item({"kind": "arithmetic", "answer": 12}, "7 + 5 = 13.") == 0.0
    assert score_item({"kind": "greeting"}, "Hello! I am fine.") == 1.0
    assert score_item({"kind": "greeting"}, "The answer is 4.") == 0.0
    assert score_item({"kind": "definition", "subject": "Paris"}, "Paris is the capital of France.") == 1.0
    assert score_item({"kind": "definition", "subject": "Paris"}, "London is a city.") == 0.0


def test_pick_decoding_takes_the_lowest_judge_among_varied_enough_settings():
    d = [{"temperature": t} for t in (0.8, 0.6, 0.5, 0.4)]
    rows = [{"decoding": d[0], "judge_ppl": 500.0, "distinct_2": 0.9},
            {"decoding": d[1], "judge_ppl": 230.0, "distinct_2": 0.75},
            {"decoding": d[2], "judge_ppl": 90.0, "distinct_2": MIN_DISTINCT_2},  # on the bar: allowed
            {"decoding": d[3], "judge_ppl": 44.0, "distinct_2": MIN_DISTINCT_2 - 0.01}]  # too repetitive
    assert pick_decoding(rows) == d[2]
    assert pick_decoding([r for r in rows if r["decoding"] != d[2]]) == d[1]  # the grid without T 0.5
    assert pick_decoding([{**r, "distinct_2": 0.1} for r in rows]) == d[0]  # none varied: the first
    assert pick_decoding([{**rows[0], "judge_ppl": float("nan")}, rows[1]]) == d[1]
    temps = [g["temperature"] for g in DECODING_GRID if "no_repeat_ngram_size" not in g]
    assert temps == sorted(temps, reverse=True) and 0.5 in temps  # the first is the fixed T 0.8


def test_midtraining_mix_documents_and_leak_check():
    recs = T.build(400, seed=1, mix=T.MIDTRAIN_MIX)
    share = sum(r["kind"] == "arithmetic" for r in recs) / len(recs)
    assert share == pytest.approx(0.7, abs=0.02)  # arith_en 0.6 + arith_zh 0.1
    # rendered documents keep every conversation, in order, `per_doc` to a document
    render = lambda msgs: "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in msgs)  # noqa: E731
    docs = T.render_documents(recs, render, per_doc=16)
    assert len(docs) == 25 and "".join(docs) == "".join(render(r["messages"]) for r in recs)
    items = T.heldout_items()
    assert T.leaked_prompts(items, recs) == []
    planted = recs + [{"messages": [{"role": "user", "content": items[0]["prompt"]},
                                    {"role": "assistant", "content": "x"}]}]
    assert T.leaked_prompts(items, planted) == [items[0]["prompt"]]


def test_build_drops_definitions_found_in_excluded_text():
    recs = T.build(400, seed=2)
    defs = [r["messages"][1]["content"] for r in recs if r["kind"] == "definition"]
    excluded = "Some validation text. " + defs[0] + " More text. " + defs[1].rstrip(".")
    kept = [r["messages"][1]["content"] for r in T.build(400, seed=2, exclude_text=excluded)
            if r["kind"] == "definition"]
    assert defs[0] not in kept and defs[1] not in kept and set(kept) == set(defs) - {defs[0], defs[1]}


def test_chat_stop_ids_are_the_turn_markers():
    from types import SimpleNamespace

    from llmlab.speedrun.judge import chat_stop_ids
    tok = SimpleNamespace(special={"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2})
    assert chat_stop_ids(tok) == (1, 2)
    assert chat_stop_ids(SimpleNamespace(special={"<|endoftext|>": 0})) == ()


def test_fact_lines_are_right_cover_the_table_and_avoid_heldout_wordings():
    import random
    lines = T.fact_lines(6000, random.Random(0))
    ops = {"+": lambda a, b: a + b, "plus": lambda a, b: a + b, "加": lambda a, b: a + b,
           "-": lambda a, b: a - b, "minus": lambda a, b: a - b, "减": lambda a, b: a - b,
           "×": lambda a, b: a * b, "times": lambda a, b: a * b, "乘以": lambda a, b: a * b}
    seen = set()
    for ln in lines:
        m = (re.fullmatch(r"(\d+) ([+×-]|plus|minus|times) (\d+) (?:=|equals) (\d+)[.。]?", ln)
             or re.fullmatch(r"(\d+)(加|减|乘以)(\d+)等于(\d+)。", ln))
        assert m, ln
        a, op, b, c = m.groups()
        assert int(c) == ops[op](int(a), int(b)) >= 0, ln
        seen.add((int(a), ops[op](7, 3), int(b)))  # (a, which operation, b)
        low = ln.lower()
        assert not any(p in low for p in ("how much", "tell me what", "work out", "would like", "figure out"))
    # every single-digit + and - fact the held-out questions can ask is in 6,000 lines
    for a in range(10):
        for b in range(10):
            assert (a, 10, b) in seen
            if b <= a:
                assert (a, 4, b) in seen
    docs = T.fact_documents(130, seed=1, per_doc=64)
    assert [len(d.split("\n")) for d in docs] == [64, 64, 2]
    assert docs == T.fact_documents(130, seed=1, per_doc=64) != T.fact_documents(130, seed=2, per_doc=64)


def test_no_training_subject_names_a_heldout_one():
    held = {"Renaissance", "Blue whale"}
    assert T._names_a_heldout_subject("Renaissance music", held)
    assert T._names_a_heldout_subject("The Blue whale song", held)
    assert not T._names_a_heldout_subject("Blue", held) and not T._names_a_heldout_subject("Renaissances", held)


def test_sft_arithmetic_has_edge_facts_beyond_chance():
    recs = [r for r in T.build(3000, seed=4) if r["kind"] == "arithmetic" and r["messages"][1]["content"][-1] == "."]
    pm = [tuple(map(int, re.fullmatch(r"(\d+) [+-] (\d+) = -?\d+\.", r["messages"][1]["content"]).groups()))
          for r in recs if "×" not in r["messages"][1]["content"]]
    edge = sum(a == b or bool({0, 1} & {a, b}) for a, b in pm) / len(pm)
    # by chance alone about 0.42 (an operand 0 or 1, or a - a); EDGE_SHARE = 0.25 makes it about 0.59
    assert T.EDGE_SHARE == 0.25 and edge > 0.5


def test_build_hard_share_weights_the_carry_sums_and_defaults_to_the_old_draw():
    from llmlab.errors import UserError
    mix = {"arith_en": 1.0, "arith_zh": 0.0, "definition": 0.0, "greeting": 0.0, "idiom": 0.0}

    def carry_share(recs):
        sums = [tuple(map(int, re.match(r"(\d+) \+ (\d+) =", r["messages"][1]["content"]).groups()))
                for r in recs if r["kind"] == "arithmetic" and " + " in r["messages"][1]["content"]]
        return sum(a + b >= 10 for a, b in sums) / len(sums)
    plain = T.build(3000, seed=3, mix=mix)
    assert T.build(3000, seed=3, mix=mix, hard_share=T.HARD_SHARE) == plain  # the default is the module's
    hard = T.build(3000, seed=3, mix=mix, hard_share=0.5)
    # edge facts first (0.25: a carry only for 1 + 9 / 9 + 1, ~1 in 20), then 0.5 carries, then 0.25 by
    # chance (45 of 100 sums carry)
    assert carry_share(plain) == pytest.approx(0.25 * 0.05 + 0.75 * 0.45, abs=0.04)
    assert carry_share(hard) == pytest.approx(0.25 * 0.05 + 0.5 + 0.25 * 0.45, abs=0.04)
    with pytest.raises(UserError, match="hard_share"):
        T.build(10, hard_share=0.8)  # with EDGE_SHARE 0.25 the draw has only 0.75 left


def test_build_more_stories_varies_the_word_problems_only():
    from collections import Counter

    from llmlab.errors import UserError
    assert T.build(2000, seed=1, stories="base") == T.build(2000, seed=1)  # the default is the old draw
    base, more = T.build(12000, seed=1), T.build(12000, seed=1, stories="more")
    assert Counter(r["kind"] for r in base) == Counter(r["kind"] for r in more)
    patterns = {op: [(t, re.compile(re.escape(t).replace(r"\{a\}", r"\d+").replace(r"\{b\}", r"\d+")))
                     for t in T.ARITH_STORIES_EN[op] + T.MORE_STORIES_EN[op]] for op in "+-*"}

    def stories(recs):  # wording -> count over the English word problems
        out = Counter()
        for u in _users([r for r in recs if r["kind"] == "arithmetic"]):
            out.update(t for ps in patterns.values() for t, rx in ps if rx.fullmatch(u))
        return out
    sb, sm = stories(base), stories(more)
    assert set(sb) == {t for ts in T.ARITH_STORIES_EN.values() for t in ts}
    assert set(sm) == {t for ps in patterns.values() for t, _ in ps}  # every new wording is drawn
    assert sum(sm.values()) == pytest.approx(sum(sb.values()), rel=0.15)  # the group is drawn as often
    for r in more:  # the answers stay right: the reply's equation matches the question's numbers
        if r["kind"] == "arithmetic" and r["messages"][1]["content"].endswith("."):
            a, sym, b, c = re.fullmatch(r"(\d+) (\S) (\d+) = (-?\d+)\.", r["messages"][1]["content"]).groups()
            assert int(c) == r["answer"] == {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[sym]
    with pytest.raises(UserError, match="stories"):
        T.build(10, stories="most")
