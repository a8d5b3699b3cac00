"""Agent success on multi-step arithmetic: chain of thought without tools vs ReAct with the
calculator or the sandboxed Python tool, same items, greedy decoding. Correct = the answer's last
integer equals the computed one (llmlab.eval.tasks.arithmetic.last_int)."""
from __future__ import annotations

import json
import sys
import time

from llmlab.agent.tasks import cot_demos, multistep_items, react_demos
from llmlab.eval.tasks.arithmetic import last_int

COT_SYSTEM = "Solve the problem step by step, then end with 'Final Answer: <number>'."


def evaluate_multistep(llm, n: int, seed: int, conditions: list[str], max_steps: int = 5, max_new_tokens: int = 96,
                       out_path: str | None = None, constrained: bool = True) -> list[dict]:
    """Accuracy per condition; `constrained`: the ReAct turns are decoded under the step grammar
    (react.step_pattern) with an integer final answer, so format slips cannot sink the agent."""
    from llmlab.agent.builtin import make_registry
    from llmlab.agent.react import ReActAgent
    items = multistep_items(n, seed)
    out = open(out_path, "w", encoding="utf-8") if out_path else None
    rows = []
    for cond in conditions:
        correct = answered = 0
        tok0, t0 = llm.tokens, time.perf_counter()
        for i, it in enumerate(items):
            if cond == "none":
                text = llm.chat([{"role": "system", "content": COT_SYSTEM + "\n\n" + cot_demos()},
                                 {"role": "user", "content": f"Question: {it['question']}"}], max_new_tokens=max_new_tokens)
                pred, status, transcript = last_int(text.rsplit("Final Answer:", 1)[-1]), "answered", text
            else:
                agent = ReActAgent(llm, make_registry([cond]), max_steps, 300.0, max_new_tokens,
                                   constrained=constrained, answer_pattern=r"-?[0-9]{1,12}")
                res = agent.run(it["question"], extra_instructions=react_demos(cond))
                pred, status, transcript = last_int(res.answer or ""), res.status, res.transcript
            ok = pred == str(it["answer"])
            correct += ok
            answered += status == "answered"
            if out:
                out.write(json.dumps({"condition": cond, "i": i, "answer": it["answer"], "pred": pred, "ok": ok,
                                      "status": status, "transcript": transcript}) + "\n")
            print(f"  {cond} {i + 1}/{n}: {'ok' if ok else 'wrong'} ({pred} vs {it['answer']})", file=sys.stderr)
        rows.append({"condition": cond, "constrained": constrained and cond != "none", "accuracy": correct / n, "answered": answered / n, "n": n,
                     "tokens_per_item": (llm.tokens - tok0) / n, "seconds_per_item": (time.perf_counter() - t0) / n})
    if out:
        out.close()
    return rows
