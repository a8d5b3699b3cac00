"""Arithmetic and word problems from a seeded generator, scored by exact match.

Four operations on 2-digit numbers plus four word-problem templates; 3 fixed worked examples
(generated with a different seed, never equal to a test item) are prepended. The model's
answer is the last integer of its reply line. Baseline: always answering the most frequent gold
answer of the set (a constant guess), which is what a model that ignores the question gets.
"""
from __future__ import annotations

import random
from collections import Counter

from llmlab.eval.answers import last_integer_text
from llmlab.eval.tasks.base import Task

_NAMES = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia"]
_OBJECTS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "cards"]


# operation -> (x, y, answer) from the two draws a, b: subtraction stays >= 0, division is exact
_OPERATIONS = {
    "plus": lambda a, b: (a, b, a + b),
    "minus": lambda a, b: (max(a, b), min(a, b), max(a, b) - min(a, b)),
    "times": lambda a, b: (a, b, a * b),
    "divided by": lambda a, b: (a * b, b, a),
}
_WORD_PROBLEMS = {
    "plus": "{name} has {x} {obj} and gets {y} more. How many {obj} does {name} have now?",
    "minus": "{name} had {x} {obj} and gave {y} of them away. How many {obj} are left?",
    "times": "There are {y} boxes with {x} {obj} in each box. How many {obj} are there in total?",
    "divided by": "{name} shares {x} {obj} equally among {y} friends. How many {obj} does each friend get?",
}


def make_problem(rng: random.Random) -> tuple[str, int]:
    """One of 8 kinds: the 4 operations asked plainly ("What is 12 plus 5?"), then as word problems."""
    kind = rng.randrange(8)
    op = list(_OPERATIONS)[kind % 4]
    a, b = rng.randint(10, 99), rng.randint(2, 9 if op in ("times", "divided by") else 99)
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    x, y, answer = _OPERATIONS[op](a, b)
    template = f"What is {{x}} {op} {{y}}?" if kind < 4 else _WORD_PROBLEMS[op]
    return template.format(x=x, y=y, name=name, obj=obj), answer


def last_int(text: str) -> str:
    """The answer is the last integer of the reply ("12 + 46 = 58" -> 58), as in GSM8K scoring."""
    return last_integer_text(text) or ""


class Arithmetic(Task, kind="generate", name="arithmetic", default_limit=50):
    def items(self, limit: int | None, seed: int) -> list[dict]:
        shot_rng = random.Random(seed + 7919)
        shots = [make_problem(shot_rng) for _ in range(3)]
        rng = random.Random(seed)
        seen = {q for q, _ in shots}
        out = []
        while len(out) < (limit or self.default_limit):
            q, a = make_problem(rng)
            if q in seen:
                continue
            seen.add(q)
            head = "".join(f"Question: {sq}\nAnswer: {sa}\n\n" for sq, sa in shots)
            out.append({"question": q, "answer": str(a), "prompt": f"{head}Question: {q}\nAnswer:"})
        return out

    def evaluate(self, ctx, items: list[dict]) -> dict:
        correct = 0
        gens = ctx.generate_many([it["prompt"] for it in items], max_new_tokens=16, stop=["\n"])  # digits: 1 token
        for it, g in zip(items, gens):
            correct += last_int(g.text) == it["answer"]
        top = Counter(it["answer"] for it in items).most_common(1)[0][1] if items else 0
        n = max(len(items), 1)
        return {"exact_match": correct / n, "chance": top / n, "n": len(items)}

    def texts(self, items: list[dict]) -> list[str]:
        return [it["question"] for it in items]
