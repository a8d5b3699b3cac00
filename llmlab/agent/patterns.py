"""Agent patterns built on the ReAct loop.

plan_and_execute (Wang et al. 2023, Plan-and-Solve): the model first writes a numbered plan, each
  step runs as its own ReAct task seeing the results so far, and a last call writes the answer.
reflexion (Shinn et al. 2023): after a failed attempt (the checker says no), the model writes a
  short self-critique; the critiques go into the next attempt's prompt; up to `trials` attempts.
debate (Du et al. 2023): two agents answer, then for `rounds` rounds each reads the other's answer
  and revises; the final answer is the one they agree on, else agent A's.
"""
from __future__ import annotations

import re
from collections import Counter

from llmlab.agent.react import AgentResult, ReActAgent


def parse_plan(text: str, max_steps: int = 5) -> list[str]:
    steps = [m.group(1).strip() for m in re.finditer(r"^\s*\d+[.)]\s*(.+)$", text, re.M)]
    return steps[:max_steps]


def plan_and_execute(agent: ReActAgent, question: str, max_plan_steps: int = 4) -> AgentResult:
    llm, tr = agent.llm, agent.tracer
    plan_text = llm.chat([{"role": "user", "content": "Write a short numbered plan (at most "
                           f"{max_plan_steps} steps) to answer this question. Do not answer it yet.\n\n{question}"}],
                         max_new_tokens=160)
    plan = parse_plan(plan_text, max_plan_steps) or [question]
    tr.log("plan", plan)
    results, steps = [], 0
    for i, step in enumerate(plan, 1):
        done = "\n".join(f"Step {j}: {s} -> {r}" for j, (s, r) in enumerate(results, 1))
        sub = agent.run(f"{step}", extra_instructions=f"Overall question: {question}\nResults so far:\n{done or '(none)'}")
        steps += sub.steps
        results.append((step, sub.answer if sub.answer is not None else f"(not done: {sub.status})"))
    done = "\n".join(f"Step {j}: {s} -> {r}" for j, (s, r) in enumerate(results, 1))
    final = llm.chat([{"role": "user", "content": f"Question: {question}\nWork done:\n{done}\n\n"
                       "Give only the final answer."}], max_new_tokens=60).strip()
    tr.log("final", final, status="answered")
    return AgentResult(final, "answered", steps, events=list(tr.events))


def reflexion(agent: ReActAgent, question: str, check, trials: int = 3) -> tuple[AgentResult, list[str]]:
    """`check(answer) -> bool` is the external evaluator (a unit test, a known answer, a verifier)."""
    reflections: list[str] = []
    res = None
    for t in range(trials):
        extra = ("Lessons from your earlier failed attempts:\n" + "\n".join(f"- {r}" for r in reflections)) if reflections else ""
        res = agent.run(question, extra_instructions=extra, seed=100 * t)
        if res.answer is not None and check(res.answer):
            agent.tracer.log("status", f"passed on attempt {t + 1}")
            return res, reflections
        critique = agent.llm.chat([{"role": "user", "content": f"You tried to answer: {question}\nYour attempt:\n"
                                    f"{res.transcript[-1500:]}\nIt was wrong. In one sentence, what went wrong and "
                                    "what will you do differently?"}], max_new_tokens=60).strip()
        reflections.append(critique.splitlines()[0] if critique else "try a different approach")
        agent.tracer.log("reflection", reflections[-1], attempt=t + 1)
    return res, reflections


def _short(ans: str) -> str:
    nums = re.findall(r"-?\d+(?:\.\d+)?", ans.replace(",", ""))
    return nums[-1] if nums else ans.strip().lower()


def debate(llm, question: str, rounds: int = 2, max_new_tokens: int = 160, tracer=None) -> tuple[str, list]:
    sys_a = "You are a careful reasoner. Think step by step and end with 'Answer: <answer>'."
    sys_b = "You are a skeptical checker. Verify every step and end with 'Answer: <answer>'."
    history = []
    answers = []
    for role, system in (("A", sys_a), ("B", sys_b)):
        answers.append(llm.chat([{"role": "system", "content": system}, {"role": "user", "content": question}],
                                max_new_tokens))
    history.append(list(answers))
    for _ in range(rounds):
        new = []
        for me, system in ((0, sys_a), (1, sys_b)):
            other = answers[1 - me]
            msg = (f"{question}\n\nAnother agent answered:\n{other}\n\nYour previous answer:\n{answers[me]}\n\n"
                   "Considering both, give your updated answer.")
            new.append(llm.chat([{"role": "system", "content": system}, {"role": "user", "content": msg}], max_new_tokens))
        answers = new
        history.append(list(answers))
        if tracer:
            tracer.log("debate", {"A": answers[0][-200:], "B": answers[1][-200:]})
    finals = [_short(a.rsplit("Answer:", 1)[-1]) for a in answers]
    final = Counter(finals).most_common(1)[0][0] if finals[0] == finals[1] else finals[0]
    return final, history
