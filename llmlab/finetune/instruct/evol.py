"""Evol-Instruct (Xu et al. 2024, "WizardLM: Empowering large language models to follow complex
instructions", section 3): instructions rewritten into harder ones, round after round.

- In-depth evolving (5 operations, the paper's prompts shortened): add constraints, deepen,
  concretise, increase reasoning steps, complicate the input.
- In-breadth evolving: a brand-new instruction in the same domain, rarer in topic.
- Elimination (the paper's 4 cases, section 3.3): (1) no information gain over the original (we
  test ROUGE-L >= 0.7 to it, or the same text after normalisation, instead of asking ChatGPT);
  (2) the answer shows the model could not respond: it contains "sorry" and is under 80 words;
  (3) the answer is only punctuation and stop words; (4) the evolved instruction copies words of
  the evolving prompt ("#Rewritten Prompt#", "given prompt", "rewritten prompt", ...). A failed
  evolution puts the original back in the pool, as in the paper.
- Evolvers: an LLM through `self_instruct.Generate` (SmolLM2-135M-Instruct on the engine), or
  `RuleEvolver`, a seeded rule-based mutator for when the model is too weak to follow the
  evolving prompts; `elimination` counts every reason per round, so the rates can be compared.
"""
from __future__ import annotations

import random
import re
from collections import Counter

from llmlab.eval.rouge import rouge_l_cjk
from llmlab.finetune.instruct.self_instruct import Generate, normalize

DEPTH = {
    "constraints": "Please add one more constraint or requirement to the #Given Prompt#.",
    "deepening": "If the #Given Prompt# asks about a certain issue, increase the depth and breadth of the inquiry.",
    "concretizing": "Replace general concepts in the #Given Prompt# with more specific concepts.",
    "reasoning": "If the #Given Prompt# can be solved with a few simple steps, rewrite it to explicitly request "
                 "multiple-step reasoning.",
    "complicate_input": "Add a concrete input (a table, a list of numbers or a short text) that the #Given Prompt# "
                        "must work on.",
}
DEPTH_PROMPT = ("I want you to act as a Prompt Rewriter. Your objective is to rewrite a given prompt into a more "
                "complex version that a human can still understand and answer. {method} The #Rewritten Prompt# may "
                "add only 10 to 20 words to the #Given Prompt#.\n#Given Prompt#:\n{instruction}\n#Rewritten Prompt#:\n")
BREADTH_PROMPT = ("I want you to act as a Prompt Creator. Draw inspiration from the #Given Prompt# to create a brand "
                  "new prompt in the same domain but rarer. Its length and difficulty should be similar.\n"
                  "#Given Prompt#:\n{instruction}\n#Created Prompt#:\n")
OPERATIONS = (*DEPTH, "breadth")
COPIED = ("#given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt", "rewritten prompt",
          "created prompt", "prompt rewriter", "prompt creator")
STOP_WORDS = {"the", "a", "an", "and", "or", "of", "to", "is", "it", "in", "on", "i", "you", "this", "that", "be"}


def evolving_prompt(operation: str, instruction: str) -> str:
    if operation == "breadth":
        return BREADTH_PROMPT.format(instruction=instruction)
    return DEPTH_PROMPT.format(method=DEPTH[operation], instruction=instruction)


def eliminate(original: str, evolved: str, answer: str, threshold: float = 0.7) -> str | None:
    """The reason an evolution fails (None = keep): the paper's four cases plus an empty rewrite."""
    if not evolved.strip():
        return "empty"
    if normalize(evolved) == normalize(original) or rouge_l_cjk(original, evolved) >= threshold:
        return "no_gain"
    if "sorry" in answer.lower() and len(answer.split()) < 80:
        return "answer_sorry"
    if not [w for w in re.findall(r"\w+", answer.lower()) if w not in STOP_WORDS]:
        return "answer_empty"
    if any(c in evolved.lower() for c in COPIED):
        return "copied_prompt"
    return None


class RuleEvolver:
    """Rule-based in-depth / in-breadth mutations, seeded (no model)."""

    CONSTRAINTS = ["Answer in at most 50 words.", "Use exactly three bullet points.", "Do not use the letter 'e'.",
                   "Give one example.", "End with a one-sentence summary.", "Answer in both English and Chinese."]
    REASONING = ["Explain your reasoning step by step.", "Justify each step before giving the final answer.",
                 "First list what you know, then derive the answer."]
    CONCRETE = {"a country": "Japan", "a city": "Lisbon", "an animal": "the snow leopard", "a food": "kimchi",
                "something": "a bicycle", "a person": "a nurse", "a number": "144", "a colour": "teal"}
    INPUTS = ["Use this data: | year | sales |\n| 2021 | 120 |\n| 2022 | 150 |", "Input: [3, 8, 1, 9, 4]",
              "Text: \"The meeting moved to Thursday because the room was booked.\""]
    TOPICS = ["the history of tea", "how bees communicate", "a budget for a school trip", "the rules of go",
              "why leaves change colour", "saving water at home", "how a bicycle gear works", "the Silk Road"]
    FORMS = ["Write a short guide to {t}.", "Explain {t} to a ten-year-old.", "List three surprising facts about {t}.",
             "Compare two views on {t}."]

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, operation: str, instruction: str) -> str:
        r, base = self.rng, instruction.rstrip()
        if operation == "constraints":
            return f"{base} {r.choice(self.CONSTRAINTS)}"
        if operation == "deepening":
            return f"{base} Also discuss why this matters and what the common misconceptions are."
        if operation == "concretizing":
            for general, specific in self.CONCRETE.items():
                if general in base:
                    return base.replace(general, specific, 1)
            return f"{base} Focus on one concrete, named example."
        if operation == "reasoning":
            return f"{base} {r.choice(self.REASONING)}"
        if operation == "complicate_input":
            return f"{base}\n{r.choice(self.INPUTS)}"
        return r.choice(self.FORMS).format(t=r.choice(self.TOPICS))


def evolve(pool: list[str], rounds: int, answer, rewrite, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Evol-Instruct rounds. rewrite(operation, instruction) -> evolved text (a list of them per call
    is batched by `llm_rewriter`); answer(list[str]) -> answers. Returns the surviving records
    {"instruction", "answer", "operation", "round", "parent"} and per-round stats."""
    rng, records, stats = random.Random(seed), [], []
    current = list(pool)
    for rnd in range(rounds):
        ops = [rng.choice(OPERATIONS) for _ in current]
        evolved = rewrite(ops, current)
        answers = answer(evolved)
        reasons, nxt = Counter(), []
        for op, orig, ev, ans in zip(ops, current, evolved, answers):
            why = eliminate(orig, ev, ans)
            reasons[why or "kept"] += 1
            if why is None:
                records.append({"instruction": ev, "answer": ans, "operation": op, "round": rnd, "parent": orig})
                nxt.append(ev)
            else:
                nxt.append(orig)  # a failed evolution goes back to the pool
        stats.append({"round": rnd, "n": len(current), "eliminated": 1 - reasons["kept"] / max(1, len(current)),
                      **{k: v for k, v in reasons.items()}})
        current = nxt
    return records, stats


def rule_rewriter(seed: int = 0):
    ev = RuleEvolver(seed)
    return lambda ops, insts: [ev(o, i) for o, i in zip(ops, insts)]


def llm_rewriter(generate: Generate, seed: int = 0, max_new_tokens: int = 96):
    """The evolving prompts answered by a chat LLM; the first paragraph of its reply is the rewrite."""
    def rewrite(ops: list[str], insts: list[str]) -> list[str]:
        convs = [[{"role": "user", "content": evolving_prompt(o, i)}] for o, i in zip(ops, insts)]
        outs = generate(convs, 0.7, max_new_tokens, [seed + j for j in range(len(convs))], "")
        return [o.strip().split("\n\n")[0].strip() for o in outs]
    return rewrite


def llm_answerer(generate: Generate, max_new_tokens: int = 96):
    return lambda insts: generate([[{"role": "user", "content": i}] for i in insts], 0.0, max_new_tokens,
                                  [0] * len(insts), "")


def from_model(model: str = "smollm2", rounds: int = 3, seed: int = 0, evolver: str = "llm",
               max_new_tokens: int = 96) -> tuple[list[dict], list[dict]]:
    """Evol-Instruct from the Self-Instruct seed tasks; `model` answers, and rewrites when evolver=llm."""
    from llmlab.errors import UserError
    from llmlab.finetune.instruct.self_instruct import SEED_TASKS, engine_generator
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer

    if evolver not in ("llm", "rules"):
        raise UserError(f"config key 'evolver': {evolver!r} is not llm or rules")
    m, tok = load_model_and_tokenizer(model)
    gen = engine_generator(m.eval(), tok)
    rewrite = llm_rewriter(gen, seed, max_new_tokens) if evolver == "llm" else rule_rewriter(seed)
    recs, stats = evolve([q for q, _ in SEED_TASKS], rounds, llm_answerer(gen, max_new_tokens), rewrite, seed)
    for r in recs:
        r.update(messages=[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["answer"]}],
                 provenance="synthetic", source=f"evol-instruct:{evolver}:{model}")
    return recs, stats
