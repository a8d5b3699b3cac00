"""Constitutional AI pipeline with a stub LLM (every stage's records and fields), and the CLI verbs."""
from __future__ import annotations

import math

import pytest

from llmlab.align.cai import CAIConfig, ai_preferences, critique_revise
from llmlab.align.preference_data import check_rows


class StubLLM:
    """Deterministic: answers echo the prompt's length, revisions say 'revised', judge prefers shorter."""

    def __init__(self):
        self.calls = []
        self.n = 0

    def generate(self, prompt, temperature=None):
        self.calls.append(prompt)
        if "Revision request" in prompt:
            return "revised answer"
        if "Critique request" in prompt:
            return "it could be safer"
        self.n += 1
        return f"answer {self.n}" + "!" * (self.n % 3)

    def option_logprobs(self, prompt, options):
        a = prompt.split("(A) ")[1].split("\n")[0]
        b = prompt.split("(B) ")[1].split("\n")[0]
        return [-len(a), -len(b)]


def test_critique_revision_sft_rows():
    llm = StubLLM()
    rows = critique_revise(llm, ["q1", "q2"], CAIConfig(num_revisions=2))
    assert [r["prompt"] for r in rows] == ["q1", "q2"]
    assert all(r["completion"] == "revised answer" and len(r["trail"]) == 2 for r in rows)
    assert any("Critique request" in c for c in llm.calls) and any("Revision request" in c for c in llm.calls)


def test_ai_preferences_rows_feed_reward_data():
    rows = ai_preferences(StubLLM(), ["q1", "q2", "q3"], CAIConfig())
    assert rows and check_rows(rows) == rows
    for r in rows:
        assert len(r["chosen"]) <= len(r["rejected"]) and 0.5 <= r["p_chosen"] <= 1 and r["principle"]
        assert math.isfinite(r["p_chosen"])


def test_cli_verbs_registered_and_configs_parse():
    from llmlab.align.commands import VERBS
    from llmlab.config import load_config
    from llmlab.errors import UserError

    assert {"reward", "dpo", "grpo", "ppo", "cai"} <= set(VERBS)
    cfg = load_config(VERBS["dpo"].config, ["loss_type=kto", "beta=0.2"])
    assert cfg.loss_type == "kto" and cfg.beta == 0.2
    with pytest.raises(UserError):
        load_config(VERBS["dpo"].config, ["loss_type=nope"])
    with pytest.raises(UserError):
        load_config(VERBS["grpo"].config, ["num_generations=1"])
    from pathlib import Path
    configs = Path(__file__).resolve().parent.parent / "configs"
    for verb in ("reward", "dpo", "grpo", "ppo", "cai"):
        load_config(VERBS[verb].config, [str(configs / f"align_{verb}.yaml")])
    proc = load_config(VERBS["grpo"].config, [str(configs / "align_grpo_process.yaml")])
    assert proc.supervision == "process" and proc.step_end == "digits"


def test_revision_echo_is_stripped():
    class Echo(StubLLM):
        def generate(self, prompt, temperature=None):
            return "Human: q\n\nAssistant: clean answer" if "Revision request" in prompt else super().generate(prompt)

    assert critique_revise(Echo(), ["q"], CAIConfig())[0]["completion"] == "clean answer"
