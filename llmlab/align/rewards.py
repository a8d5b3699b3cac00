"""Verifiable rewards: exact-match arithmetic and format checks (DeepSeekMath/R1-style rule rewards).

A reward function takes (row, completion_text) and returns a float. Non-finite rewards are refused
by the trainers (logged and the sample gets no gradient), never fed into the advantages.
"""
from __future__ import annotations

import re

_INT = re.compile(r"-?\d+")
_ANSWER_ONLY = re.compile(r"\s*-?\d+\s*")
_TAGGED = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")


def extract_answer(text: str) -> str | None:
    """The integer in <answer>...</answer> if present, else the first integer in the text."""
    m = _TAGGED.search(text)
    if m:
        return m.group(1)
    m = _INT.search(text)
    return m.group(0) if m else None


def exact_match_reward(row: dict, completion: str) -> float:
    """1.0 when the extracted integer equals row['answer'], else 0.0."""
    got = extract_answer(completion)
    return float(got is not None and int(got) == int(row["answer"]))


def format_reward(row: dict, completion: str) -> float:
    """1.0 when the completion is only an integer or contains <answer>int</answer>."""
    return float(bool(_ANSWER_ONLY.fullmatch(completion) or _TAGGED.search(completion)))


def arithmetic_reward(row: dict, completion: str, format_weight: float = 0.2) -> float:
    """Exact match plus a small format bonus: dense enough for a random policy to find signal."""
    return exact_match_reward(row, completion) + format_weight * format_reward(row, completion)


REWARDS = {"exact_match": exact_match_reward, "format": format_reward, "arithmetic": arithmetic_reward}
