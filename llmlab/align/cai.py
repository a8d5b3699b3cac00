"""Constitutional AI (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback").

Humans write only a constitution: a list of principles, each a critique request and a revision
request. Two stages, both driven by the model itself:
  supervised (SL-CAI): answer -> critique against a sampled principle -> revise (n rounds); the
      final revisions become SFT data {"prompt", "completion"} (with the trail kept for inspection);
  RLAIF: sample two answers, ask the model, as a multiple-choice question under a sampled principle,
      which is better; the normalised probabilities of "(A)" / "(B)" are the AI preference label,
      emitted as {"prompt", "chosen", "rejected", "p_chosen", "principle"} for the reward model
      (`llmlab reward data=preferences.jsonl`), whose scores then drive PPO.
The LLM is pluggable: anything with `generate(prompt) -> str` and `option_logprobs(prompt, options)`.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from llmlab.errors import UserError
from llmlab.log import get_logger

# In the spirit of the paper's appendix C principles (helpful, honest, harmless: the "3H" goal).
CONSTITUTION = [
    {"critique": "Identify specific ways in which the assistant's last response is harmful, unethical, dangerous or illegal.",
     "revision": "Please rewrite the assistant response to remove any harmful, unethical, dangerous or illegal content."},
    {"critique": "Point out anything in the assistant's last response that is factually wrong or that it cannot know.",
     "revision": "Please rewrite the assistant response so that it is accurate and says so when it is unsure."},
    {"critique": "Explain how the assistant's last response could be more helpful to the person asking.",
     "revision": "Please rewrite the assistant response to be more helpful while staying harmless and honest."},
    {"critique": "Identify anything in the assistant's last response that is rude, toxic or disrespectful.",
     "revision": "Please rewrite the assistant response to be polite and respectful."},
]
CHOICE_PRINCIPLES = [
    "Which of these assistant responses is less harmful?",
    "Which of these assistant responses is more honest and accurate?",
    "Which of these assistant responses is more helpful without being harmful?",
]
DEFAULT_PROMPTS = [
    "How do I pick a lock to get into my neighbour's house?",
    "What is the capital of Australia?",
    "Write an insult for my coworker.",
    "How can I lose 10 kg in one week?",
    "Explain why the sky is blue.",
    "Tell me how to make a fake ID.",
]


@dataclass
class CAIConfig:
    num_revisions: int = field(default=1, metadata={"help": "critique/revision rounds per answer"})
    max_new_tokens: int = field(default=96, metadata={"help": "tokens per generation"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (answers)"})
    seed: int = field(default=0, metadata={"help": "principle sampling and generation seed"})


class LocalLLM:
    """Our model as a chat LLM: generate() renders a user turn with the chat template."""

    def __init__(self, model, tok, max_new_tokens: int = 96, temperature: float = 0.7, seed: int = 0):
        self.model, self.tok, self.max_new_tokens, self.temperature = model, tok, max_new_tokens, temperature
        self.gen = torch.Generator().manual_seed(seed)

    def _prompt_ids(self, text: str) -> list[int]:
        return self.tok.encode(self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))

    def generate(self, prompt: str, temperature: float | None = None) -> str:
        from llmlab.align.rollout import sample
        t = self.temperature if temperature is None else temperature
        ro = sample(self.model, [self._prompt_ids(prompt)], self.max_new_tokens, self.tok.eos_id,
                    self.tok.eos_id or 0, t, 1.0, self.gen)
        return self.tok.decode([i for i in ro.completions()[0] if i != self.tok.eos_id]).strip()

    @torch.no_grad()
    def option_logprobs(self, prompt: str, options: list[str]) -> list[float]:
        from llmlab.align.logprobs import sequence_logprobs
        p = self._prompt_ids(prompt)
        lp, _ = sequence_logprobs(self.model, [p] * len(options), [self.tok.encode(o) for o in options])
        return lp.tolist()


def _conversation(prompt: str, response: str) -> str:
    return f"Human: {prompt}\n\nAssistant: {response}"


def _strip_echo(text: str) -> str:
    """Small models often echo the 'Human: ... Assistant:' frame; keep only the answer after it."""
    return text.rsplit("Assistant:", 1)[-1].strip() if "Assistant:" in text else text.strip()


def critique_revise(llm, prompts: list[str], cfg: CAIConfig, constitution: list[dict] | None = None) -> list[dict]:
    """SL-CAI data: one {"prompt", "completion"} row per prompt, the completion being the last revision."""
    constitution = constitution or CONSTITUTION
    if not constitution:
        raise UserError("the constitution is empty")
    rng, rows, log = random.Random(cfg.seed), [], get_logger()
    for prompt in prompts:
        response = initial = llm.generate(prompt)
        trail = []
        for _ in range(cfg.num_revisions):
            pr = rng.choice(constitution)
            convo = _conversation(prompt, response)
            critique = llm.generate(f"{convo}\n\nCritique request: {pr['critique']}", temperature=0.0)
            revision = llm.generate(f"{convo}\n\nCritique: {critique}\n\nRevision request: {pr['revision']}\n\n"
                                    "Reply with the revised response only.", temperature=0.0)
            revision = _strip_echo(revision)
            trail.append({"principle": pr["critique"], "critique": critique, "revision": revision})
            if revision.strip():
                response = revision
        if not response.strip():
            log.warning("cai: empty final response for prompt %r; skipped", prompt[:60])
            continue
        rows.append({"prompt": prompt, "completion": response, "initial": initial, "trail": trail})
    return rows


def ai_preferences(llm, prompts: list[str], cfg: CAIConfig, principles: list[str] | None = None) -> list[dict]:
    """RLAIF labels: two sampled answers, the model judges "(A)" vs "(B)" under a sampled principle."""
    principles = principles or CHOICE_PRINCIPLES
    rng, rows, log = random.Random(cfg.seed + 1), [], get_logger()
    for prompt in prompts:
        a, b = llm.generate(prompt), llm.generate(prompt)
        if not a.strip() or not b.strip() or a.strip() == b.strip():
            log.warning("cai: two identical or empty answers for %r; no preference row", prompt[:60])
            continue
        q = rng.choice(principles)
        judge = (f"Consider the following conversation.\n\nHuman: {prompt}\n\n{q}\n"
                 f"Options:\n(A) {a}\n(B) {b}\n\nThe answer is:")
        la, lb = llm.option_logprobs(judge, [" (A)", " (B)"])
        if not (math.isfinite(la) and math.isfinite(lb)):
            log.warning("cai: non-finite judge log-probs for %r; skipped", prompt[:60])
            continue
        p_a = 1 / (1 + math.exp(lb - la))  # softmax over the two options
        chosen, rejected, p = (a, b, p_a) if p_a >= 0.5 else (b, a, 1 - p_a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "p_chosen": p, "principle": q})
    return rows
