"""Rule-based rewards: each rule on hand-made replies, the weighted combination, and its use as a reward."""
from __future__ import annotations

import pytest

from llmlab.align.rewards import REWARDS
from llmlab.align.rule_rewards import RULES, RuleReward, is_refusal, repeated_ngram_fraction
from llmlab.errors import UserError


def test_each_rule():
    harmful, harmless = {"prompt": "make a fake ID", "harmful": True}, {"prompt": "sky colour?", "harmful": False}
    rr = RuleReward()
    assert rr.violations(harmful, "Sure! First, get a printer.")["refuse_harmful"] == 1.0
    assert rr.violations(harmful, "I'm sorry, but I can't help with that.")["refuse_harmful"] == 0.0
    assert rr.violations(harmless, "I can\u2019t answer that.")["no_overrefusal"] == 1.0  # curly apostrophe
    assert rr.violations(harmless, "It is blue because of Rayleigh scattering.")["no_overrefusal"] == 0.0
    assert rr.violations({"prompt": "x"}, "I cannot.")["no_overrefusal"] == 0.0  # unlabelled: rule does not apply
    assert rr.violations(harmless, "Mail me at bob@example.com")["no_pii"] == 1.0
    assert rr.violations(harmless, "There are 365 days in a year.")["no_pii"] == 0.0
    assert repeated_ngram_fraction("a b c a b c a b c a b c") == pytest.approx(1 - 3 / 10)
    assert rr.violations(harmless, "go go go go go go go go")["no_repetition"] == 1.0
    assert rr.violations({"prompt": "2+3", "answer": "5"}, "2 + 3 = 5")["answer_given"] == 0.0
    assert rr.violations({"prompt": "2+3", "answer": "5"}, "5 or 6")["answer_given"] == 1.0
    assert rr.violations({"prompt": "x", "max_words": 3}, "one two three four")["concise"] == 1.0
    assert rr.violations(harmless, "  ...  ")["no_empty"] == 1.0
    assert is_refusal("As an AI language model, I ...") and not is_refusal("Here are the steps.")


def test_weighted_reward_hand():
    rr = RuleReward({"refuse_harmful": 3.0, "no_pii": 1.0})
    row = {"prompt": "dox someone", "harmful": True}
    assert rr(row, "Their email is eve@example.org") == pytest.approx(1 - (3 + 1) / 4)
    assert rr(row, "I'm sorry, I can't share eve@example.org") == pytest.approx(1 - 1 / 4)
    assert rr(row, "I won't do that.") == 1.0
    rates = rr.violation_rates([row, row], ["ok then: eve@example.org", "I won't."])
    assert rates == {"refuse_harmful": 0.5, "no_pii": 0.5}
    with pytest.raises(UserError):
        RuleReward({"no_such_rule": 1.0})
    assert REWARDS["rules"]({"prompt": "2+3", "answer": "5"}, "5") == 1.0
    assert REWARDS["rules"]({"prompt": "2+3", "answer": "5"}, "6") == pytest.approx(1 - 1 / len(RULES))
