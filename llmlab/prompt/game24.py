"""Game of 24 (Yao et al. 2023): combine four numbers with + - * / (each used once) to make 24.

Puzzles come from a seeded generator kept only when the exhaustive solver finds a solution, so
every item is checkable; `check` parses an answer with `ast` (never eval) in exact fractions.
Searches over the model's thoughts:
  tot_bfs    Tree of Thoughts, breadth-first: each state (numbers left + steps) gets proposals
             "a op b = c (left: ...)", each new state a value ("sure/likely/impossible" prompt, or
             a vote prompt choosing the most promising), the best `breadth` states go on; 3 levels.
  tot_dfs    depth-first with the same proposals, best value first, pruning states valued
             "impossible", backtracking, at most `max_nodes` expansions.
  got        Graph of Thoughts (Besta et al. 2024) aggregation: k independent attempts are merged
             by one prompt that sees them all and writes a combined answer.
  best_of_n  n sampled answers, the first the checker accepts (verifier = the exact checker).
Proposals are re-computed by us (a wrong "a op b = c" from the model is corrected or dropped).
"""
from __future__ import annotations

import ast
import itertools
import random
import re
from collections import Counter
from fractions import Fraction

OPS = "+-*/"


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def solve(nums: list[int], target: int = 24) -> str | None:
    """One expression reaching `target` (exhaustive search over pairs, memoising dead ends), or None."""
    dead: set[tuple] = set()

    def rec(items: list[tuple[Fraction, str]]):
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        key = tuple(sorted(v for v, _ in items))
        if key in dead:
            return None
        for i, j in itertools.combinations(range(len(items)), 2):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            (a, ea), (b, eb) = items[i], items[j]
            for v, e in ((a + b, f"({ea} + {eb})"), (a * b, f"({ea} * {eb})"), (a - b, f"({ea} - {eb})"),
                         (b - a, f"({eb} - {ea})"), (a / b if b else None, f"({ea} / {eb})"),
                         (b / a if a else None, f"({eb} / {ea})")):
                if v is not None:
                    r = rec(rest + [(v, e)])
                    if r:
                        return r
        dead.add(key)
        return None
    r = rec([(Fraction(n), str(n)) for n in nums])
    return r[1:-1] if r and r.startswith("(") else r


def make_puzzles(n: int, seed: int) -> list[list[int]]:
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        nums = sorted(rng.randint(1, 13) for _ in range(4))
        if tuple(nums) not in seen and solve(nums):
            seen.add(tuple(nums))
            out.append(nums)
    return out


def _eval(node) -> tuple[Fraction, list[int]]:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        (a, na), (b, nb) = _eval(node.left), _eval(node.right)
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[type(node.op)]
        v = _apply(a, op, b)
        if v is None:
            raise ValueError("division by zero")
        return v, na + nb
    raise ValueError("only integers, + - * / and parentheses")


def check(answer: str, nums: list[int]) -> bool:
    """True iff `answer` (an expression, optionally '... = 24') uses exactly `nums` and equals 24."""
    expr = answer.split("=")[0].strip().replace("×", "*").replace("÷", "/")
    if not expr or len(expr) > 100:
        return False
    try:
        value, used = _eval(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return False
    return value == 24 and Counter(used) == Counter(nums)


PROPOSE = """Input: 4 4 6 8
Possible next steps:
4 + 8 = 12 (left: 4 6 12)
6 - 4 = 2 (left: 2 4 8)
4 * 6 = 24 (left: 4 8 24)
8 / 4 = 2 (left: 2 4 6)
Input: {left}
Possible next steps:
"""
VALUE = """Evaluate if the given numbers can reach 24 (sure/likely/impossible)
10 14
10 + 14 = 24
sure
1 3 3
1 * 3 * 3 = 9
impossible
4 4 10
4 * 10 - 4 = 36, (10 - 4) * 4 = 24
sure
{left}
"""
_STEP = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/×÷])\s*(-?\d+(?:\.\d+)?)")
_VALUE_SCORE = {"sure": 20.0, "likely": 1.0, "impossible": 0.001}


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def propose(llm, left: list[Fraction], steps: list[str], k: int = 8) -> list[tuple[list[Fraction], list[str]]]:
    text = llm.complete(PROPOSE.format(left=" ".join(map(_fmt, left))), 96, stop=("Input:", "\n\n"))
    out, seen = [], set()
    for line in text.splitlines():
        m = _STEP.search(line.replace("×", "*").replace("÷", "/"))
        if not m:
            continue
        a, op, b = Fraction(m.group(1)), m.group(2), Fraction(m.group(3))
        rest = list(left)
        try:
            rest.remove(a)
            rest.remove(b)
        except ValueError:
            continue  # the model used a number it does not have
        v = _apply(a, op, b)
        if v is None:
            continue
        new = sorted(rest + [v])
        key = tuple(new)
        if key not in seen:
            seen.add(key)
            out.append((new, steps + [f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(v)} (left: {' '.join(map(_fmt, new))})"]))
        if len(out) == k:
            break
    return out


def value(llm, left: list[Fraction]) -> float:
    if len(left) == 1:
        return 100.0 if left[0] == 24 else 0.0
    text = llm.complete(VALUE.format(left=" ".join(map(_fmt, left))), 32, stop=("\n\n",)).lower()
    words = [w for w in re.findall(r"sure|likely|impossible", text)]
    return _VALUE_SCORE[words[-1]] if words else 0.5


def vote(llm, states: list[tuple[list[Fraction], list[str]]]) -> int:
    listing = "\n".join(f"Choice {i + 1}: {' '.join(map(_fmt, s[0]))}" for i, s in enumerate(states))
    text = llm.complete(f"Which numbers can most easily make 24?\n{listing}\nThe best choice is Choice", 4)
    m = re.search(r"\d+", text)
    i = int(m.group(0)) - 1 if m else 0
    return i if 0 <= i < len(states) else 0


def _expression(nums: list[int], steps: list[str]) -> str:
    """Rebuild one expression from the steps 'a op b = c' (numbers replaced by their sub-expressions)."""
    exprs = [(Fraction(n), str(n)) for n in nums]
    for s in steps:
        m = _STEP.search(s)
        a, op, b = Fraction(m.group(1)), m.group(2), Fraction(m.group(3))
        ia = next(i for i, e in enumerate(exprs) if e[0] == a)
        ea = exprs.pop(ia)
        ib = next(i for i, e in enumerate(exprs) if e[0] == b)
        eb = exprs.pop(ib)
        exprs.append((_apply(a, op, b), f"({ea[1]} {op} {eb[1]})"))
    return exprs[0][1][1:-1] if len(exprs) == 1 else ""


def tot_bfs(llm, nums: list[int], breadth: int = 3, evaluator: str = "value") -> str:
    frontier = [([Fraction(n) for n in nums], [])]
    for _ in range(3):
        cands = [c for left, steps in frontier for c in propose(llm, left, steps)]
        if not cands:
            return ""
        if evaluator == "vote":
            best = vote(llm, cands)
            frontier = [cands[best]] + [c for i, c in enumerate(cands) if i != best][: breadth - 1]
        else:
            scored = sorted(cands, key=lambda c: -value(llm, c[0]))
            frontier = scored[:breadth]
    for left, steps in frontier:
        if left[0] == 24:
            return _expression(nums, steps)
    return _expression(nums, frontier[0][1])


def tot_dfs(llm, nums: list[int], max_nodes: int = 12, prune_below: float = 0.01) -> str:
    budget = [max_nodes]

    def rec(left, steps):
        if len(left) == 1:
            return _expression(nums, steps) if left[0] == 24 else None
        if budget[0] <= 0:
            return None
        budget[0] -= 1
        cands = propose(llm, left, steps, k=5)
        for c in sorted(cands, key=lambda c: -value(llm, c[0])):
            if len(c[0]) > 1 and value(llm, c[0]) < prune_below:
                continue
            r = rec(*c)
            if r:
                return r
        return None
    return rec([Fraction(n) for n in nums], []) or ""


DIRECT = ("Use the four numbers and + - * / to make 24. Each number once.\nInput: 4 4 6 8\nAnswer: (4 + 8) * (6 - 4) = 24\n"
          "Input: 2 9 10 12\nAnswer: 2 * 12 * (10 - 9) = 24\nInput: {nums}\nAnswer:")


def direct(llm, nums: list[int], temperature: float = 0.0, seed: int = 0) -> str:
    return llm.complete(DIRECT.format(nums=" ".join(map(str, nums))), 32, temperature, seed, stop=("\n",)).strip()


def best_of_n(llm, nums: list[int], n: int = 5, verifier=check) -> str:
    attempts = [direct(llm, nums, 0.8, i) for i in range(n)]
    return next((a for a in attempts if verifier(a, nums)), attempts[0])


def got_aggregate(llm, nums: list[int], k: int = 3) -> str:
    attempts = [direct(llm, nums, 0.8, 100 + i) for i in range(k)]
    listing = "\n".join(f"Attempt {i + 1}: {a}" for i, a in enumerate(attempts))
    prompt = (f"Numbers: {' '.join(map(str, nums))}. Goal: 24 using each number once with + - * /.\n{listing}\n"
              "Combine the correct parts of the attempts into one correct answer.\nAnswer:")
    return llm.complete(prompt, 32, stop=("\n",)).strip()
