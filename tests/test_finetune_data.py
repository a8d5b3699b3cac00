"""Instruction-data builders and the JSONL reader."""
from __future__ import annotations

import json

import pytest

from llmlab.errors import UserError
from llmlab.finetune.instruct.builders import (arithmetic, build_all, chitchat, grade_answer, idioms, split_heldout,
                                      wiki_tell_me, _question)
from llmlab.finetune.jsonl import read_jsonl, validate_record, write_jsonl


def test_arithmetic_is_seeded_and_exactly_gradable():
    a, b = arithmetic(200, seed=3, lang="en"), arithmetic(200, seed=3, lang="en")
    assert a == b and arithmetic(200, seed=4)[:5] != a[:5]
    for r in a + arithmetic(200, seed=3, lang="zh"):
        validate_record(r)
        q, reply = r["prompt"][0]["content"], r["completion"][0]["content"]
        assert r["provenance"] == "synthetic" and grade_answer(reply, r["answer"])
        m = __import__("re").fullmatch(r"What is (\d+) ([+\-×]) (\d+)\?", q)
        if m:  # recompute plain arithmetic from the question text
            x, op, y = int(m[1]), m[2], int(m[3])
            assert r["answer"] == {"+": x + y, "-": x - y, "×": x * y}[op]
    assert any("boxes" in r["prompt"][0]["content"] for r in a)  # two-step word problems present
    assert grade_answer("I think it is 12, no, 27", 27) and not grade_answer("27 or 28", 27)
    assert not grade_answer("no idea", 3)


def test_packaged_builders_and_labels():
    w = wiki_tell_me(5, seed=1)
    assert len(w) == 5 and all(r["provenance"] == "templated" for r in w)
    assert all(r["messages"][1]["content"] and r["messages"][0]["role"] == "user" for r in w)
    i = idioms(5, seed=1)
    assert all(r["reference"] in r["messages"][1]["content"] for r in i)
    for lang in ("english", "chinese"):
        c = chitchat(lang)
        assert len(c) > 100 and all(r["provenance"] == "corpus" and r["messages"][-1]["role"] == "assistant" for r in c)
        assert any(len(r["messages"]) > 2 for r in c)  # multi-turn conversations kept
    with pytest.raises(UserError, match="klingon"):
        chitchat("klingon")


def test_heldout_split_has_no_leak(tmp_path):
    recs = chitchat("english")
    train, held = split_heldout(recs, 0.2)
    assert len(train) + len(held) == len(recs) and 0.05 < len(held) / len(recs) < 0.35  # grouped by question
    assert not {_question(r) for r in train} & {_question(r) for r in held}
    m = build_all(tmp_path, n=30, seed=0, names=["arith_en", "arith_zh", "chitchat_zh"])
    for name, info in m.items():
        tr, _ = read_jsonl(tmp_path / f"{name}.train.jsonl")
        he, _ = read_jsonl(tmp_path / f"{name}.heldout.jsonl")
        assert len(tr) == info["train"] and len(he) == info["heldout"]
    assert json.loads((tmp_path / "manifest.json").read_text())["arith_zh"]["provenance"] == "synthetic"


def test_jsonl_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    no_asst = {"messages": [{"role": "user", "content": "hi"}]}
    p.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(no_asst) + "\n"
                 + json.dumps({"prompt": "2+2=", "completion": "4"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"d\.jsonl:2: "):
        read_jsonl(p)
    recs, skipped = read_jsonl(p, on_error="skip")
    assert len(recs) == 2 and skipped == 2
    p.write_text(json.dumps(good) + "\n" + json.dumps(no_asst) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"d\.jsonl:2: conversation has no assistant turn"):
        read_jsonl(p)
    with pytest.raises(UserError, match="no assistant turn"):
        write_jsonl(tmp_path / "e.jsonl", [no_asst])
    with pytest.raises(UserError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
