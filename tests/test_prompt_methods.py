"""k-shot selection and ordering, answer extraction, self-consistency, Game of 24 solver/checker and
the Tree-of-Thoughts search (with a scripted model)."""
import itertools
from fractions import Fraction

import numpy as np
import torch

from llmlab.prompt import game24
from llmlab.prompt.fewshot import DemoSelector, build_prompt
from llmlab.prompt.reasoning import cot_prompt, extract_answer, self_consistency

POOL = [{"question": q, "answer": a} for q, a in [("apple apple pie", "1"), ("banana split", "2"),
                                                  ("apple tart", "3"), ("cherry pie", "4"), ("apple apple apple", "5")]]


class BagEncoder:
    """Unit bag-of-words vectors over a fixed vocabulary: cosine similarities computable by hand."""
    vocab = ["apple", "pie", "banana", "split", "tart", "cherry"]

    def encode(self, texts):
        v = torch.tensor([[t.split().count(w) for w in self.vocab] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(v, dim=-1)


def test_selection_methods():
    sel = DemoSelector(POOL, encoder=BagEncoder())
    assert sel.select("x", 3, "random", seed=1) == sel.select("x", 3, "random", seed=1)
    assert sorted(sel.select("x", 5, "random")) == [0, 1, 2, 3, 4]
    assert sel.select("apple pie", 2, "nearest") == [0, 4]  # cosines by hand: 0.949, 0.707 (apple x3), 0.5, 0.5, 0
    assert sel.select("banana", 1, "bm25") == [1]
    # MMR by hand: lam=0.5; first = most similar (0); second maximises 0.5*sim - 0.5*max sim to chosen
    vecs = BagEncoder().encode([d["question"] for d in POOL]).numpy()
    q = BagEncoder().encode(["apple pie"]).numpy()[0]
    sim = vecs @ q
    second = max((i for i in range(5) if i != 0), key=lambda i: 0.5 * sim[i] - 0.5 * vecs[i] @ vecs[0])
    assert sel.select("apple pie", 2, "mmr") == [0, second] and second != 4  # the near-duplicate is avoided
    idx = sel.select("apple pie", 3, "nearest")
    assert sel.order("apple pie", idx, "nearest_last")[-1] == idx[0]
    assert sel.order("apple pie", idx, "reversed") == idx[::-1]


def test_random_selection_is_drawn_per_item():
    """Each query gets its own random draw (a seed alone gave every item of a run the same k), the
    same (query, seed) always the same one; `random` order likewise shuffles per query."""
    pool = [{"question": f"q{i}", "answer": str(i)} for i in range(64)]
    sel = DemoSelector(pool)
    queries = [f"item {j}" for j in range(20)]
    draws = [tuple(sel.select(q, 4, "random", seed=0)) for q in queries]
    assert len(set(draws)) >= 18  # 20 draws of 4 from 64: a repeat has probability < 1e-3
    assert draws == [tuple(sel.select(q, 4, "random", seed=0)) for q in queries]  # reproducible
    assert sum(d != tuple(sel.select(q, 4, "random", seed=1)) for d, q in zip(draws, queries)) >= 18
    assert all(len(set(d)) == 4 for d in draws)  # without replacement
    orders = {tuple(sel.order(q, list(range(8)), "random", seed=0)) for q in queries}
    assert len(orders) >= 18 and all(sorted(o) == list(range(8)) for o in orders)


def test_build_prompt_and_extraction():
    p = build_prompt(POOL[:2], "new q", instruction="Answer.")
    assert p == "Answer.\n\nQuestion: apple apple pie\nAnswer: 1\n\nQuestion: banana split\nAnswer: 2\n\nQuestion: new q\nAnswer:"
    assert extract_answer("12 + 3 = 15. So the answer is 15.\nQuestion: next 99") == "15"
    assert extract_answer("First 3 then 4. Final Answer: 7 apples") == "7"
    assert extract_answer("It is Paris.", numeric=False) == "It is Paris"
    assert cot_prompt("q?").endswith("Let's think step by step.")
    assert "The answer is 5." in cot_prompt("q?", [{"question": "a", "rationale": "2+3=5.", "answer": "5"}])


class Canned:
    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.calls = []

    def complete(self, prompt, max_new_tokens=0, temperature=0.0, seed=0, stop=()):
        self.calls.append(prompt)
        return self.outputs.pop(0)


def test_self_consistency_majority():
    llm = Canned(["so 5", "The answer is 7.", "answer is 7", "no idea", "3 + 4 = 7"])
    best, answers = self_consistency(llm, "p", n=5)
    assert best == "7" and answers == ["5", "7", "7", "", "7"]


def test_game24_solver_and_checker():
    for nums in game24.make_puzzles(20, seed=3):
        expr = game24.solve(nums)
        assert game24.check(expr, nums), (nums, expr)
    assert game24.solve([1, 1, 1, 1]) is None
    assert game24.check("(4 + 8) * (6 - 4) = 24", [4, 4, 6, 8])
    assert game24.check("8 / (3 - 8 / 3)", [3, 3, 8, 8])  # needs exact fractions
    assert not game24.check("(4 + 8) * (6 - 4)", [4, 4, 6, 9])  # wrong numbers
    assert not game24.check("4 * 6", [4, 6, 1, 1])
    assert not game24.check("__import__('os')", [1, 2, 3, 4])
    # every solvable multiset up to 5 is found by brute force over all expressions too
    for nums in itertools.combinations_with_replacement(range(1, 6), 4):
        assert (game24.solve(list(nums)) is not None) == _brute(list(nums))


def _brute(nums):
    vals = [{Fraction(n)} for n in nums]

    def combine(a, b):
        out = set()
        for x in a:
            for y in b:
                out |= {x + y, x - y, y - x, x * y}
                if y:
                    out.add(x / y)
                if x:
                    out.add(y / x)
        return out
    for p in itertools.permutations(range(4)):
        a, b, c, d = (vals[i] for i in p)
        if 24 in combine(combine(combine(a, b), c), d) or 24 in combine(combine(a, b), combine(c, d)):
            return True
    return False


def test_tot_bfs_with_scripted_model():
    llm = Canned(["4 + 8 = 12 (left: 4 6 12)\n6 - 4 = 2 (left: 2 4 8)\n9 + 9 = 18 (left: bogus)",
                  "sure", "likely",  # values of the two valid proposals (9 + 9 uses numbers it lacks)
                  "6 - 4 = 2 (left: 2 12)\n12 * 3 = 36 (left: 36)", "sure",  # 12 * 3: no 3 left, dropped
                  "12 * 2 = 24 (left: 24)"])
    out = game24.tot_bfs(llm, [4, 4, 6, 8], breadth=1)
    assert game24.check(out, [4, 4, 6, 8]), out
    assert np.isclose(game24.value(Canned([]), [Fraction(24)]), 100.0)
