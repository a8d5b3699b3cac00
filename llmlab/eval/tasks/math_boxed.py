"""A MATH-style task (Hendrycks et al. 2021): LaTeX answers, the model's final answer is the
last `\\boxed{...}` of its reply, compared after normalisation.

Extraction walks braces with a depth counter, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`
(a regex up to the first `}` would give `\\frac{1`); `\\fbox{}` and `\\boxed 5` count too.
Normalisation (after the MATH paper's `is_equiv`): drop spaces, `\\left`/`\\right`, `\\!`,
`$`, a trailing period, degrees and `\\text{...}` units; `\\dfrac`/`\\tfrac` -> `\\frac`;
`\\frac12` -> `\\frac{1}{2}`; `a/b` of two integers -> `\\frac{a}{b}`; `0.5` -> `\\frac{1}{2}` when
exact; a leading `x=`. Two answers are equal when their normal forms are, or when both parse to
the same rational number (so `\\frac{2}{4}` = `\\frac{1}{2}` = `0.5`).

Problems come from a seeded generator (fractions, linear equations, quadratic roots, gcd/lcm,
binomials, simplified radicals), each with 2 worked examples in the prompt.
"""
from __future__ import annotations

import math
import random
import re
from fractions import Fraction

from llmlab.eval.tasks.base import Task

_BOX = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}, or `\\boxed x`), nested braces kept."""
    start = max(text.rfind(b) for b in _BOX)
    if start < 0:
        return None
    name = next(b for b in _BOX if text.startswith(b, start))
    i = start + len(name)
    if i < len(text) and text[i] == " ":  # "\boxed 5": up to the next space or $
        m = re.match(r" ([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unbalanced


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2}, \frac{1}2 -> \frac{1}{2}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)


def normalize(ans: str) -> str:
    s = ans.strip()
    if re.search(r"\S\s*\\text\{[^{}]*\}$", s):  # a trailing unit ("5 \text{ cm}") goes
        s = re.sub(r"\\text\{[^{}]*\}$", "", s)
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("$", ""),
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^{\\circ}", ""), ("^\\circ", ""), ("\\%", ""),
                 ("%", "")):
        s = s.replace(a, b)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"^[a-zA-Z]=", "", s)
    s = _fix_fracs(s)
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def as_number(s: str) -> Fraction | None:
    """A normalised answer as an exact rational, if it is an integer, decimal or \\frac of them."""
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", s)
    try:
        if m:
            v = Fraction(int(m.group(2)), int(m.group(3)))
            return -v if m.group(1) else v
        if re.fullmatch(r"-?\d+(\.\d+)?", s.replace(",", "")):
            return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_equiv(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    a, b = normalize(pred), normalize(gold)
    if a == b:
        return True
    x, y = as_number(a), as_number(b)
    return x is not None and x == y


def _tex(q: Fraction) -> str:
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def make_problem(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b = Fraction(rng.randint(1, 9), rng.randint(2, 9)), Fraction(rng.randint(1, 9), rng.randint(2, 9))
        return (f"Compute $\\frac{{{a.numerator}}}{{{a.denominator}}} + \\frac{{{b.numerator}}}{{{b.denominator}}}$. "
                "Express your answer as a common fraction.", _tex(a + b))
    if kind == 1:
        a, b, c = rng.randint(2, 9), rng.randint(-20, 20), rng.randint(-20, 20)
        return f"Solve for $x$: ${a}x {'+' if b >= 0 else '-'} {abs(b)} = {c}$.", _tex(Fraction(c - b, a))
    if kind == 2:
        r, s = rng.randint(-9, 9), rng.randint(-9, 9)
        return (f"What is the sum of the roots of $x^2 {'-' if r + s >= 0 else '+'} {abs(r + s)}x "
                f"{'+' if r * s >= 0 else '-'} {abs(r * s)} = 0$?", str(r + s))
    if kind == 3:
        a, b = rng.randint(2, 30) * rng.randint(1, 6), rng.randint(2, 30) * rng.randint(1, 6)
        if rng.random() < 0.5:
            return f"What is the greatest common divisor of ${a}$ and ${b}$?", str(math.gcd(a, b))
        return f"What is the least common multiple of ${a}$ and ${b}$?", str(a * b // math.gcd(a, b))
    if kind == 4:
        n = rng.randint(4, 12)
        k = rng.randint(1, n - 1)
        return f"Compute $\\dbinom{{{n}}}{{{k}}}$.", str(math.comb(n, k))
    out, inside = rng.choice([2, 3, 5]), rng.choice([2, 3, 5, 6, 7])
    return f"Simplify $\\sqrt{{{out * out * inside}}}$.", f"{out}\\sqrt{{{inside}}}"


_SHOTS = [("Compute $\\frac{1}{2} + \\frac{1}{3}$. Express your answer as a common fraction.",
           "The common denominator is 6: $\\frac{3}{6} + \\frac{2}{6} = \\boxed{\\frac{5}{6}}$."),
          ("Solve for $x$: $3x + 4 = 19$.", "$3x = 15$, so $x = \\boxed{5}$.")]


class MathBoxed(Task, kind="generate", name="math_boxed", default_limit=50):
    def items(self, limit: int | None, seed: int) -> list[dict]:
        rng, seen, out = random.Random(seed), {q for q, _ in _SHOTS}, []
        head = "".join(f"Problem: {q}\nSolution: {a}\n\n" for q, a in _SHOTS)
        while len(out) < (limit or self.default_limit):
            q, a = make_problem(rng)
            if q not in seen:
                seen.add(q)
                out.append({"problem": q, "answer": a, "prompt": f"{head}Problem: {q}\nSolution:"})
        return out

    def evaluate(self, ctx, items: list[dict]) -> dict:
        correct = boxed = 0
        for it in items:
            g = ctx.generate(it["prompt"], max_new_tokens=96, stop=["\nProblem:", "\n\n"])
            pred = last_boxed(g.text)
            boxed += pred is not None
            correct += is_equiv(pred, it["answer"])
        n = max(len(items), 1)
        return {"exact_match": correct / n, "boxed_rate": boxed / n, "chance": 0.0, "n": len(items)}

    def texts(self, items: list[dict]) -> list[str]:
        return [it["problem"] for it in items]
