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
    stats = {c: {"correct": 0, "answered": 0, "tokens": 0, "seconds": 0.0} for c in conditions}
    for i, it in enumerate(items):  # item-major: an interrupted run still compares the conditions on the same items
        for cond in conditions:
            tok0, t0 = llm.tokens, time.perf_counter()
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
