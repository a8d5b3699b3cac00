"""Reading the answer out of a model's reply: the last integer, as GSM8K's "flexible-extract"
(lm-eval) does. One reader for eval tasks, SFT held-out grading and alignment rewards."""
from __future__ import annotations

import re

_INT = re.compile(r"-?\d+")


def last_integer_text(text: str) -> str | None:
    """The last integer of the reply as written ("12 + 46 = 58" -> "58"; thousands commas dropped)."""
    nums = _INT.findall(text.replace(",", ""))
    return nums[-1] if nums else None


def last_integer(text: str) -> int | None:
    """The last integer of the reply as a number; None when it holds no integer."""
    s = last_integer_text(text)
    return int(s) if s is not None else None


def last_integer_matches(text: str, answer: int | str) -> bool:
    """Exact match of the reply's last integer ("The answer is 27." / "答案是27。") with the answer."""
    got = last_integer(text)
    return got is not None and got == int(answer)
