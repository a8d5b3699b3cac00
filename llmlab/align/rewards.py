"""Verifiable rewards: exact-match arithmetic and format checks (DeepSeekMath/R1-style rule rewards).

A reward function takes (row, completion_text) and returns a float. Non-finite rewards are refused
by the trainers (logged and the sample gets no gradient), never fed into the advantages.
"""
from __future__ import annotations

import re

from llmlab.eval.answers import last_integer_matches

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


_BARE_INT = re.compile(r"\s*(-?\d+)\.?\s*")


def strict_exact_match_reward(row: dict, completion: str) -> float:
    """1.0 only when the completion is the correct integer and nothing else (a trailing period is
    allowed): "Answer with the number only" taken literally. Unlike `exact_match_reward`, an echo of
    the question ("1 + 0 = 1") or a truncated sentence never counts, even when its first integer
    happens to be the answer."""
    m = _BARE_INT.fullmatch(completion)
    return float(m is not None and int(m.group(1)) == int(row["answer"]))


def strict_arithmetic_reward(row: dict, completion: str, format_weight: float = 0.2) -> float:
    """Strict exact match plus a small bonus for a bare integer: 1.2 right, 0.2 a wrong bare number, 0 else."""
    return strict_exact_match_reward(row, completion) + format_weight * float(_BARE_INT.fullmatch(completion) is not None)


def last_int_match_reward(row: dict, completion: str) -> float:
    """1.0 when the reply's last integer is the answer ("9 * 5 = 45", "The answer is 45.", "45"),
    else 0.0: answer correctness with lm-eval's gsm8k "flexible-extract", whatever the format."""
    return float(last_integer_matches(completion, row["answer"]))


def flexible_arithmetic_reward(row: dict, completion: str, format_weight: float = 0.2) -> float:
    """Correctness first, format second: 1.0 for a right answer in any form (last-integer match),
    + `format_weight` when it is also the bare number ("45": 1.2, "9 * 5 = 45": 1.0), 0 for any
    wrong reply. Unlike `strict_arithmetic_reward`, a wrong bare guess earns nothing, so the format
    bonus can never pay for answering with a number instead of the right one."""
    return last_int_match_reward(row, completion) + format_weight * strict_exact_match_reward(row, completion)


def rules_reward(row: dict, completion: str) -> float:
    """Rule-based reward (llmlab.align.rule_rewards): 1 - the weighted share of rules the reply breaks."""
    from llmlab.align.rule_rewards import rule_reward
    return rule_reward(row, completion)


REWARDS = {"rules": rules_reward, "exact_match": exact_match_reward, "format": format_reward, "arithmetic": arithmetic_reward,
           "strict_exact_match": strict_exact_match_reward, "strict_arithmetic": strict_arithmetic_reward,
           "last_int_match": last_int_match_reward, "flexible_arithmetic": flexible_arithmetic_reward}


# ---- process supervision: one verifiable reward per reasoning step -------------------------------

def prefix_match_step_reward(row: dict, steps: list[str]) -> list[float]:
    """Arithmetic answers checked step by step (steps end at digit tokens, see step_end_token_ids):
    a step is right (1.0) while the answer written so far is a prefix of the correct one, wrong (0.0)
    otherwise; the last step is scored by exact match, so a right prefix that stops short still
    loses at the end. "5" | "6" for 56 -> [1, 1]; "5" | "7" -> [1, 0]; "To solve ... 5" | "6" -> [0, 1]."""
    ans, text, out = str(int(row["answer"])), "", []
    for i, s in enumerate(steps):
        text += s
        if i == len(steps) - 1:
            out.append(exact_match_reward(row, text))
        else:
            t = text.strip()
            out.append(float(bool(t) and ans.startswith(t)))
    return out


STEP_REWARDS = {"prefix_match": prefix_match_step_reward}
STEP_ENDS = ("digits", "newline")


def step_end_token_ids(tok, kind: str = "digits") -> set[int]:
    """Token ids that end a reasoning step: tokens whose text holds a digit ('digits'; each digit of a
    number is a step) or a newline ('newline'; one step per line)."""
    if kind not in STEP_ENDS:
        raise ValueError(f"step_end must be one of {', '.join(STEP_ENDS)}, got {kind!r}")
    test = (lambda s: any(ch.isdigit() for ch in s)) if kind == "digits" else (lambda s: "\n" in s)
    specials = {i for i in (getattr(tok, "eos_id", None), getattr(tok, "pad_id", None)) if i is not None}
    return {i for i in range(tok.vocab_size) if i not in specials and test(tok.decode([i]))}
