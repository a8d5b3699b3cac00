"""TRL-style instruction data in JSONL: read, validate, write.

A record is either conversational, {"messages": [{"role", "content"}, ...]} with at least one
assistant turn, or {"prompt": ..., "completion": ...} (strings, or message lists as in TRL's
conversational prompt-completion format). Extra keys (provenance, answer, ...) are kept.
A malformed line is reported as `file:line`; on_error="skip" drops it and counts it instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from llmlab.checkpoint import atomic_write_text
from llmlab.data.packages import iter_jsonl
from llmlab.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


def _check_messages(msgs, what: str) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"'{what}' must be a non-empty list of messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ValueError(f"'{what}'[{i}] must be {{'role': one of {'/'.join(ROLES)}, 'content': str}}, got {m!r}"[:300])


def validate_record(rec) -> None:
    """Raise ValueError describing what is wrong with one record."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        _check_messages(rec["messages"], "messages")
        if not any(m["role"] == "assistant" for m in rec["messages"]):
            raise ValueError("conversation has no assistant turn (nothing to learn from)")
        return
    if "prompt" in rec and "completion" in rec:
        for k in ("prompt", "completion"):
            v = rec[k]
            if isinstance(v, list):
                _check_messages(v, k)
            elif not isinstance(v, str):
                raise ValueError(f"'{k}' must be a string or a list of messages")
        if isinstance(rec["completion"], list) and not any(m["role"] == "assistant" for m in rec["completion"]):
            raise ValueError("'completion' has no assistant turn")
        if isinstance(rec["completion"], str) and not rec["completion"]:
            raise ValueError("'completion' is empty")
        return
    if "chosen" in rec and "rejected" in rec:
        raise ValueError("'chosen'/'rejected' is preference data (llmlab dpo data=...); SFT records have a "
                         "'messages' list or 'prompt' and 'completion' fields")
    raise ValueError("expected a 'messages' list or 'prompt' and 'completion' fields")


def read_jsonl(path: str | Path, on_error: str = "raise") -> tuple[list[dict], int]:
    """(records, number skipped). on_error: "raise" (UserError naming file:line and the `on_bad_line`
    key of `llmlab sft`) or "skip"."""
    skipped: list[int] = []
    return list(iter_jsonl(path, validate=validate_record, on_error=on_error, skipped=skipped,
                           skip_key="on_bad_line")), len(skipped)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Validate and write records, one JSON object per line (UTF-8, not ASCII-escaped)."""
    lines = []
    for i, r in enumerate(records):
        try:
            validate_record(r)
        except ValueError as e:
            raise UserError(f"record {i}: {e}") from None
        lines.append(json.dumps(r, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return Path(path)

