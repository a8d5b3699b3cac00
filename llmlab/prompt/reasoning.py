"""Chain of thought and friends.

zero-shot CoT (Kojima et al. 2022): append "Let's think step by step." then extract the answer;
few-shot CoT (Wei et al. 2022): demonstrations carry worked rationales;
self-consistency (Wang et al. 2023): N sampled chains, majority vote over their extracted answers;
least-to-most (Zhou et al. 2023): ask for the sub-questions first, answer them in order, each
  answer appended to the context, the last one answers the problem.
Answer extraction: the text after "answer is"/"Final Answer:" if present, else the whole reply;
for numbers the last integer (llmlab.eval.tasks.arithmetic.last_int, as GSM8K scoring).
"""
from __future__ import annotations

import re
from collections import Counter

from llmlab.eval.tasks.arithmetic import last_int

ZERO_SHOT_COT = "Let's think step by step."
_ANSWER = re.compile(r"(?:final answer|the answer is|answer:)\s*(.*)", re.I | re.S)


def extract_answer(text: str, numeric: bool = True) -> str:
    m = None
    for m in _ANSWER.finditer(text):
        pass
    span = m.group(1) if m else text
    if numeric:
        return last_int(span.split("\n")[0] if m else span)
    return span.strip().split("\n")[0].strip().rstrip(".")


def cot_prompt(question: str, demos: list[dict] | None = None) -> str:
    """Few-shot when demos (with 'rationale' and 'answer') are given, else zero-shot CoT."""
    if demos:
        shots = "".join(f"Question: {d['question']}\nAnswer: {d['rationale']} The answer is {d['answer']}.\n\n"
                        for d in demos)
        return f"{shots}Question: {question}\nAnswer:"
    return f"Question: {question}\nAnswer: {ZERO_SHOT_COT}"


def self_consistency(llm, prompt: str, n: int = 5, temperature: float = 0.7, max_new_tokens: int = 96,
                     seed: int = 0, numeric: bool = True) -> tuple[str, list[str]]:
    """Majority answer over n sampled chains (ties: the answer that appeared first)."""
    answers = []
    for i in range(n):
        text = llm.complete(prompt, max_new_tokens, temperature, seed * 1000 + i, stop=("\nQuestion:",))
        answers.append(extract_answer(text, numeric))
    valid = [a for a in answers if a]
    if not valid:
        return "", answers
    counts = Counter(valid)
    best = max(counts.values())
    return next(a for a in valid if counts[a] == best), answers


def least_to_most(llm, question: str, max_new_tokens: int = 64, max_subquestions: int = 3) -> tuple[str, list]:
    plan = llm.complete(f"Problem: {question}\nTo solve this, we first need to answer these smaller questions:\n1.",
                        max_new_tokens, stop=("\n\n",))
    subs = [s.strip() for s in re.split(r"\n\s*\d+[.)]", "1." + plan)[0:] if s.strip()]
    subs = [re.sub(r"^1\.\s*", "", s) for s in subs][:max_subquestions]
    context, steps = f"Problem: {question}\n", []
    for q in subs + [question]:
        ans = llm.complete(f"{context}Q: {q}\nA:", max_new_tokens, stop=("\nQ:", "\n\n")).strip()
        steps.append((q, ans))
        context += f"Q: {q}\nA: {ans}\n"
    return extract_answer(steps[-1][1]), steps
