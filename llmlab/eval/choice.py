"""Multiple choice by log-likelihood: accuracy and length-normalised accuracy.

Each choice is scored by the summed log-probability of its continuation given the prompt.
acc picks the argmax of the sums; acc_norm divides each sum by the continuation's length in
characters first (lm-eval's `acc_norm`, Gao et al. 2021), which removes the bias against long
answers. Ties go to the first choice (argmax), both here and in lm-eval.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


def argmax(xs: Sequence[float]) -> int:
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def choose(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """-> (index by raw log-likelihood, index by per-character log-likelihood)."""
    norm = [lp / max(len(c), 1) for lp, c in zip(logprobs, choices)]
    return argmax(logprobs), argmax(norm)


@dataclass
class ChoiceMeter:
    n: int = 0
    correct: int = 0
    correct_norm: int = 0
    chance_sum: float = 0.0  # sum of 1/#choices: expected correct answers of a uniform guess
    per_item: list = field(default_factory=list)

    def update(self, logprobs: Sequence[float], choices: Sequence[str], gold: int) -> None:
        pick, pick_norm = choose(logprobs, choices)
        self.n += 1
        self.correct += pick == gold
        self.correct_norm += pick_norm == gold
        self.chance_sum += 1.0 / len(choices)
        self.per_item.append((pick, pick_norm, gold))

    def result(self) -> dict:
        n = max(self.n, 1)
        return {"acc": self.correct / n, "acc_norm": self.correct_norm / n, "chance": self.chance_sum / n, "n": self.n}
