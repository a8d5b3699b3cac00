"""Evol-Instruct: each elimination case by hand, the rule evolver's operations, the loop with stubs."""
from __future__ import annotations

from llmlab.finetune.instruct.evol import (DEPTH, OPERATIONS, RuleEvolver, eliminate, evolve, evolving_prompt,
                                           llm_rewriter, rule_rewriter)

ORIG = "Give three tips for staying healthy."


def test_elimination_cases():
    good = "Sleep eight hours, eat vegetables and walk daily, because each lowers the risk of disease."
    assert eliminate(ORIG, ORIG + " Answer in at most 50 words about a teenager's week.", good) is None
    assert eliminate(ORIG, "Give three tips for staying healthy!", good) == "no_gain"  # same text
    assert eliminate(ORIG, "Give three tips for staying very healthy.", good) == "no_gain"  # ROUGE-L >= 0.7
    new = "Plan a week of vegetarian dinners for a family of four on a budget."
    assert eliminate(ORIG, new, "Sorry, I cannot do that.") == "answer_sorry"
    assert eliminate(ORIG, new, "Sorry " + "word " * 90) is None  # a long answer that says sorry is kept
    assert eliminate(ORIG, new, "... the, and of!") == "answer_empty"
    assert eliminate(ORIG, "#Rewritten Prompt#: plan a vegetarian week of dinners", good) == "copied_prompt"
    assert eliminate(ORIG, "  ", good) == "empty"


def test_rule_evolver_operations():
    ev = RuleEvolver(0)
    assert ev("concretizing", "Describe a city at night.") == "Describe Lisbon at night."
    assert ev("constraints", ORIG).startswith(ORIG) and ev("constraints", ORIG) != ORIG
    assert "step" in ev("reasoning", ORIG).lower() or "derive" in ev("reasoning", ORIG)
    assert "\n" in ev("complicate_input", ORIG)
    assert ev("breadth", ORIG) != ORIG and not ev("breadth", ORIG).startswith(ORIG)
    assert set(OPERATIONS) == set(DEPTH) | {"breadth"}
    assert "#Given Prompt#" in evolving_prompt("reasoning", ORIG) and ORIG in evolving_prompt("breadth", ORIG)


def test_evolve_loop_counts_and_puts_failures_back():
    answers = iter(["Sorry, no."] + ["A real answer with content words."] * 100)
    recs, stats = evolve([ORIG, "Describe a city at night."], 2, lambda xs: [next(answers) for _ in xs],
                         rule_rewriter(0), seed=0)
    assert [s["n"] for s in stats] == [2, 2]
    assert stats[0]["answer_sorry"] == 1 and stats[0]["eliminated"] == 0.5
    assert sum(s.get("kept", 0) for s in stats) == len(recs)
    assert all(r["parent"] != r["instruction"] for r in recs)
    # an LLM evolver is asked with the evolving prompt; its first paragraph is the rewrite
    seen = []

    def gen(convs, temperature, max_new, seeds, prefill):
        seen.extend(c[0]["content"] for c in convs)
        return ["Give five tips for staying healthy as a night-shift nurse.\n\nExplanation: ..."] * len(convs)
    out = llm_rewriter(gen)(["constraints"], [ORIG])
    assert out == ["Give five tips for staying healthy as a night-shift nurse."] and "#Given Prompt#" in seen[0]
