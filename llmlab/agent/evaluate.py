"""Agent success on multi-step arithmetic: chain of thought without tools vs ReAct with the
calculator or the sandboxed Python tool, same items, greedy decoding. Correct = the answer's last
number equals the computed one (`final_number`: "64.0" counts as 64, "64.5" is 64.5, never 645)."""
from __future__ import annotations

import json
import re
import sys
import time
from decimal import Decimal

from llmlab.agent.tasks import cot_demos, multistep_items, react_demos

COT_SYSTEM = "Solve the problem step by step, then end with 'Final Answer: <number>'."
# the final answer under the step grammar: an integer or a decimal. Integers only forced a model that
# meant 64.5 (a wrong expression's value) to write "645": the mask drops the point, not the digit after it
ANSWER_PATTERN = r"-?[0-9]{1,12}(?:\.[0-9]{1,6})?"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_number(text: str) -> str:
    """The reply's last number, canonical: "64.0" -> "64", "64.50" -> "64.5", "1,200" -> "1200"; "" if none."""
    nums = _NUMBER.findall(text.replace(",", ""))
    if not nums:
        return ""
    value = Decimal(nums[-1])
    return str(int(value)) if value == value.to_integral_value() else format(value.normalize(), "f")


def evaluate_multistep(llm, n: int, seed: int, conditions: list[str], max_steps: int = 5, max_new_tokens: int = 96,
                       out_path: str | None = None, constrained: bool = True) -> list[dict]:
    """Accuracy per condition; `constrained`: the ReAct turns are decoded under the step grammar
    (react.step_pattern) with a numeric final answer (ANSWER_PATTERN), so format slips cannot sink the agent."""
    from llmlab.agent.builtin import make_registry
    from llmlab.agent.react import ReActAgent
    items = multistep_items(n, seed)
    out = open(out_path, "w", encoding="utf-8") if out_path else None
    stats = {c: {"correct": 0, "answered": 0, "tokens": 0, "seconds": 0.0} for c in conditions}
    for i, it in enumerate(items):  # item-major: an interrupted run still compares the conditions on the same items
        for cond in conditions:
            tok0, t0 = llm.tokens, time.perf_counter()
            if cond == "none":
                text = llm.chat([{"role": "system", "content": COT_SYSTEM + "\n\n" + cot_demos()},
                                 {"role": "user", "content": f"Question: {it['question']}"}], max_new_tokens=max_new_tokens)
                pred, status, transcript = final_number(text.rsplit("Final Answer:", 1)[-1]), "answered", text
            else:
                agent = ReActAgent(llm, make_registry([cond]), max_steps, 300.0, max_new_tokens,
                                   constrained=constrained, answer_pattern=ANSWER_PATTERN)
                res = agent.run(it["question"], extra_instructions=react_demos(cond))
                pred, status, transcript = final_number(res.answer or ""), res.status, res.transcript
            ok = pred == str(it["answer"])
            st = stats[cond]
            st["correct"] += ok
            st["answered"] += status == "answered"
            st["tokens"] += llm.tokens - tok0
            st["seconds"] += time.perf_counter() - t0
            if out:
                out.write(json.dumps({"condition": cond, "i": i, "answer": it["answer"], "pred": pred, "ok": ok,
                                      "status": status, "transcript": transcript}) + "\n")
                out.flush()
            print(f"  {cond} {i + 1}/{n}: {'ok' if ok else 'wrong'} ({pred} vs {it['answer']}); "
                  f"{st['correct']}/{i + 1} so far", file=sys.stderr, flush=True)
    rows = [{"condition": c, "constrained": constrained and c != "none", "accuracy": st["correct"] / n,
             "correct": st["correct"], "answered": st["answered"] / n, "n": n, "seed": seed,
             "tokens_per_item": st["tokens"] / n, "seconds_per_item": st["seconds"] / n} for c, st in stats.items()]
    if out:
        out.close()
    return rows
