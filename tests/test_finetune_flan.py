"""The FLAN/T0-style converter: capped proportional mixing (T5's formula by hand), several and inverted
templates, the CoT and few-shot shares, and bad templates."""
from __future__ import annotations

from collections import Counter

import pytest

from llmlab.errors import UserError
from llmlab.finetune.instruct.flan import MixConfig, Task, Template, arithmetic_task, mixing_rates, mixture


def test_mixing_rates_hand():
    # T5 3.5.2: r_m = min(e_m, K) / sum_n min(e_n, K); K = 1000
    r = mixing_rates({"a": 100, "b": 10_000, "c": 50}, cap=1000)
    assert r == pytest.approx({"a": 100 / 1150, "b": 1000 / 1150, "c": 50 / 1150})
    assert mixing_rates({"a": 100, "b": 300})["b"] == pytest.approx(0.75)  # no cap: proportional
    w = mixing_rates({"a": 100, "b": 100}, weights={"a": 3.0})
    assert w["a"] == pytest.approx(0.75)


def _tasks():
    big = Task("big", [{"x": i} for i in range(5000)], [Template("Q{x}", "A{x}"), Template("q {x}?", "{x}"),
                                                        Template("A{x}: question?", "Q{x}", inverted=True)])
    small = Task("small", [{"x": i} for i in range(300)], [Template("S{x}", "T{x}")])
    return big, small


def test_mixture_follows_capped_rates_and_shares():
    big, small = _tasks()
    recs = mixture([big, small], 1000, seed=0, cfg=MixConfig(cap=1000, inverted_share=0.3, few_shot_share=0.0))
    counts = Counter(r["task"] for r in recs)
    assert counts["small"] / 1000 == pytest.approx(300 / 1300, abs=0.04)
    inv = [r["inverted"] for r in recs if r["task"] == "big"]
    assert sum(inv) / len(inv) == pytest.approx(0.3, abs=0.05)
    assert len({r["template"] for r in recs if r["task"] == "big"}) == 3
    assert all(r["messages"][1]["content"].startswith("Q") for r in recs if r["inverted"])
    # the cap bounds the distinct rows a task gives: asking for more than min(e, K) per task stops there
    capped = mixture([big, small], 10_000, seed=0, cfg=MixConfig(cap=100))
    assert Counter(r["task"] for r in capped) == {"big": 100, "small": 100}


def test_cot_and_few_shot():
    t = arithmetic_task(400, 0)
    recs = mixture([t], 400, seed=1, cfg=MixConfig(cot_share=0.5, few_shot_share=0.5, shots=2, inverted_share=0.0))
    settings = Counter(r["setting"] for r in recs)
    assert settings["cot"] / 400 == pytest.approx(0.5, abs=0.08)
    cot = next(r for r in recs if r["setting"] == "cot")
    a = cot["messages"][1]["content"]
    assert "step by step" in cot["messages"][0]["content"] and a.startswith("First,") and "So the answer is" in a
    fs = next(r for r in recs if r["setting"] == "few_shot")
    assert fs["messages"][0]["content"].count("\n\n") == 2  # two demonstrations, then the question
    assert settings["few_shot"] > 0 and settings["zero_shot"] > 0


def test_bad_templates():
    with pytest.raises(UserError, match="nope"):
        Task("t", [{"x": 1}], [Template("{nope}", "{x}")])
    with pytest.raises(UserError):
        Task("t", [], [Template("{x}", "{x}")])
    with pytest.raises(UserError):
        mixture(list(_tasks()), 10, cfg=MixConfig(cot_share=2.0))
